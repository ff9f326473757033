"""genbook.page: the package's source reformatted for the book's column, doing the same thing."""

import ast
import inspect
import textwrap

import pytest

from genbook import compare, flows, page, text2image, vae
from genbook.diffusion import samplers
from genbook.video import denoiser

SHOWN = [samplers.ddim_step, compare.compare, denoiser.TemporalAttention, text2image.CrossAttention, flows.core.AffineCoupling, vae.VAE]


def _tree(source: str) -> str:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            doc = node.body[0]
            if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str):
                doc.value.value = " ".join(doc.value.value.split())  # rewrapped docstrings differ in whitespace only
    return ast.dump(tree)


@pytest.mark.parametrize("obj", SHOWN, ids=lambda o: o.__qualname__)
def test_fit_to_page_keeps_the_code_and_fits_it(obj):
    if page._ruff() is None:
        pytest.skip("ruff is not installed")
    source = textwrap.dedent(inspect.getsource(obj))
    fitted = page.fit_to_page(source)
    assert max(map(len, source.splitlines())) > page.PAGE_WIDTH  # there was something to do
    assert max(map(len, fitted.splitlines())) <= page.PAGE_WIDTH
    assert _tree(fitted) == _tree(source)


def test_strings_split_where_python_joins_them_again():
    source = 'print(f"a long message about {value:>8.2f} and {{braces}} that goes on and on past the page width")\n'
    split = page._split_strings(source, 60)
    assert split != source and ast.dump(ast.parse(split)) == ast.dump(ast.parse(source))


def test_without_ruff_the_source_is_shown_as_it_is(monkeypatch):
    monkeypatch.setattr(page, "_ruff", lambda: None)
    source = inspect.getsource(samplers.ddim_step)
    assert page.fit_to_page(source) == source
