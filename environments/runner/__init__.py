"""The runner: the small program that lives inside every sandbox.

It imports nothing but the standard library, ``grpcio`` and ``protobuf`` (plus the generated
contract in ``rlm.protos``), so any stock Python >= 3.11 can host it. ``bundle.py`` packs it into
a self-contained zipapp that every environment ships into its sandbox the same way.
"""
