"""The VQ-VAE recipe on speech: log-mel frames (``features``), the model (``model``), training with
the one loop (``recipe``), evaluation on held-out voices (``evaluate``) and ``dynacomp vq`` (``cli``)."""
