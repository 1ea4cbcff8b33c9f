"""dynacomp: learned, variable-rate compression of sequences.

Systems: ``dynacomp.dmc`` (Dynamic Memory Compression), ``dynacomp.dtp`` (Dynamic Token Pooling),
``dynacomp.hcpc`` (hierarchical CPC), ``dynacomp.vqvae`` (robust VQ); shared pieces in
``dynacomp.nn``, ``dynacomp.metrics``, ``dynacomp.data``, ``dynacomp.models``, ``dynacomp.train``.
"""

__version__ = "0.1.0"
