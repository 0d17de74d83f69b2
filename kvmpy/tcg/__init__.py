"""The architecture-neutral translation engine: IR, optimizer, Python backend, TB cache, softmmu, CPU loop.

Targets (``tcg/target/<arch>/``) translate guest code into the IR and supply the
CPU state; boards (``kvmpy/boards/``) put a target, memory and devices together.
Nothing here imports a target or a board: data flows board -> target -> engine.
"""
