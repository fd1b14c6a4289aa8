"""The codebase's own rules: short functions, no process history in code or output, no code
beside the generated report."""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP = {".venv", ".git", "tests", "runs", ".cache", "outputs", "multirun"}


def _files(*suffixes):
    for p in sorted(REPO.rglob("*")):
        rel = p.relative_to(REPO)
        if p.is_file() and p.suffix in suffixes and not (set(rel.parts) & SKIP):
            yield rel, p


def test_no_function_over_80_lines_outside_tests():
    long = [f"{rel}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for rel, p in _files(".py") for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80]
    assert not long, long


def test_no_issue_numbers_in_code_configs_or_generated_output():
    """History belongs in commit messages; citing another project's issue is fine."""
    pattern = re.compile(r"\bissues? #?\d+", re.IGNORECASE)
    other = re.compile(r"learn2learn|upstream|imaml_dev|hypertorch|#413", re.IGNORECASE)
    hits = [f"{rel}:{i}" for rel, p in _files(".py", ".yaml", ".md", ".csv", ".tex")
            for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
            if pattern.search(line) and not other.search(line)]
    assert not hits, hits


def test_no_process_history_in_code_configs_or_generated_output():
    """Numbers are stated as measured, not against an earlier round of the work."""
    pattern = re.compile(r"previous record|last round", re.IGNORECASE)
    hits = [f"{rel}:{i}" for rel, p in _files(".py", ".yaml", ".md", ".csv", ".tex")
            for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def test_reports_holds_no_code():
    assert not list((REPO / "reports").rglob("*.py"))


# Measurements and evidence belong in reports/BENCHMARKS.md or the README, not in docstrings.
MEASURED = re.compile(r"\d\s*ms\b|\bs\s*/\s*iter|[×x]\s*(faster|slower)\b|\d\s*[×x]\s+the\b|\d+(\.\d+)?\s*s per\b"
                      r"|\bit/s\b|\breports/")
# Packages others are rewriting at the moment; their docstrings are checked once that lands.
DOCSTRINGS_PENDING = ()


def test_no_timings_or_report_paths_in_docstrings():
    """Docstrings say what a thing is, its arguments, what it returns and the paper it implements."""
    hits = []
    for rel, p in _files(".py"):
        if rel.parts[0] in DOCSTRINGS_PENDING:
            continue
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                m = MEASURED.search(ast.get_docstring(n, clean=False) or "")
                if m:
                    hits.append(f"{rel}:{getattr(n, 'lineno', 1)} {getattr(n, 'name', '<module>')}: {m.group()!r}")
    assert not hits, hits


def test_no_private_torch_internals_choose_a_code_path():
    """The autograd or torch.func path is chosen from the batching mode the caller passed."""
    hits = [f"{rel}:{i}" for rel, p in _files(".py") for i, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"torch\._C\.|_functorch|peek_interpreter_stack|get_interpreter_stack", line)]
    assert not hits, hits
