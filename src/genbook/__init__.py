"""genbook: the tested implementations behind the executable textbook on image generation models.

Each chapter of the book imports this package; the notebooks show the key lines, the package
does the heavy lifting. Start with ``rt = genbook.setup()``.
"""

__version__ = "0.1.0"

from genbook.notebook import check, run_report, show_source  # noqa: E402
from genbook.runtime import ConfigError, Runtime, setup  # noqa: E402

__all__ = ["ConfigError", "Runtime", "__version__", "check", "run_report", "setup", "show_source"]
