"""Dynamic Token Pooling (Nawrot, Chorowski, Łańcucki, Ponti, ACL 2023, arXiv 2211.09761).

An hourglass character LM: a few layers at full length, a middle stack on groups of characters
mean-pooled between boundaries, a few layers after upsampling. Six boundary sources share one
interface (``DTPConfig.boundaries``): none, fixed, whitespace, unigram, entropy, gumbel::

    from dynacomp.dtp import DTPConfig, HourglassLM
    model = HourglassLM(DTPConfig(boundaries="gumbel", vocab_size=27))
    out = model(ids)   # ids (B, T) -> out.logits (B, T, V), out.boundaries (B, T), out.aux_loss
"""

from dynacomp.dtp.config import SOURCES, DTPConfig
from dynacomp.dtp.eval import evaluate
from dynacomp.dtp.model import DTPOutput, HourglassCache, HourglassLM
from dynacomp.dtp.recipe import DTPTask, RunConfig, load_run, train_run
from dynacomp.dtp.sample import generate

__all__ = ["SOURCES", "DTPConfig", "DTPOutput", "DTPTask", "HourglassCache", "HourglassLM", "RunConfig",
           "evaluate", "generate", "load_run", "train_run"]
