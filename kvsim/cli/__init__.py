"""The ``kvsim`` command line: one module per command, ``kvsim.cli.main`` dispatching.

Flags become a typed :class:`analytic.scenario.Scenario` at this edge (``kvsim.cli.args``);
nothing below the command line sees an argparse namespace.
"""
