"""The model side of DMC: decisions (pure maths), decision channels (all surgery on them), the
attention module, and converting / saving / loading models."""
