"""Data. Text: the embedded corpora, split and cached (``text``), how each is built
(``text_corpora``), text8-style cleaning (``text_cleaning``), text8 / enwik8 / wiki40b
(``text_benchmarks``). Speech: the ``Utterance`` type and reading sets (``speech``), eSpeak NG
(``espeak``), synthetic sets with exact alignments (``speech_synthesis``), recorded corpora
(``speech_corpora``). Fetching the registry packages that carry them: ``packages``."""
