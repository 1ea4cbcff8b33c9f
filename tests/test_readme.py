"""The README's Python example runs as written and its output is not degenerate."""

import contextlib
import io
import itertools
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_python_example_generates_sensible_text_with_a_compressed_cache():
    section = README.read_text().split("## In Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    printed, namespace = io.StringIO(), {}
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(README), "exec"), namespace)
    text, numbers = printed.getvalue().rstrip("\n").rsplit("\n", 1)
    tokens = namespace["out"][0, namespace["inputs"].input_ids.shape[1]:].tolist()
    assert len(tokens) == 120, text
    assert max(len(list(run)) for _, run in itertools.groupby(tokens)) <= 3, text   # no token 4 times in a row
    assert float(numbers.split()[0]) > 1.1          # the memory ratio: fewer bytes than a dense cache
