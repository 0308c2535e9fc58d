"""The docs cannot drift from the code: every name they cite exists, every table they mirror
matches its source (docs/README.md)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from shared.core.errors import SQLSTATE_ERRORS
from shared.core.settings import ENVIRONMENT_VARIABLES

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MIGRATIONS = "\n".join(
    path.read_text() for path in sorted((ROOT / "supabase" / "migrations").glob("*.sql"))
)
GUARANTEES = list(range(1, 16))
CODE = re.compile(r"`([^`]+)`")
TEST_REFERENCE = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")
CELL_SEPARATOR = re.compile(r"(?<!\\)\|")


def doc(name: str) -> str:
    return (DOCS / name).read_text()


def table(text: str, header: str) -> list[list[str]]:
    """The body rows (as lists of cells) of the markdown table whose header starts with header."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in CELL_SEPARATOR.split(line.strip().strip("|"))])
    return rows


def money_rule_index() -> list[list[str]]:
    return table(doc("guarantees.md"), "| guarantee |")


def test_guarantees_are_numbered_1_to_15():
    listed = re.findall(r"^(\d+)\. \*\*", doc("guarantees.md"), re.MULTILINE)
    assert [int(number) for number in listed] == GUARANTEES


def test_the_index_has_one_row_per_guarantee_and_built_ones_name_sql_and_tests():
    rows = money_rule_index()
    assert [row[0] for row in rows] == [f"G{number}" for number in GUARANTEES]
    for guarantee, enforced, proved in rows:
        if not enforced.startswith("planned"):
            assert CODE.findall(enforced), f"{guarantee}: no SQL object named"
            assert TEST_REFERENCE.findall(proved), f"{guarantee}: no test named"


def test_every_sql_name_in_the_index_is_in_the_migrations():
    missing = [
        (row[0], name)
        for row in money_rule_index()
        for name in CODE.findall(row[1])
        if name.removesuffix("()") not in MIGRATIONS
    ]
    assert missing == []


def test_every_test_in_the_index_exists():
    missing = []
    for row in money_rule_index():
        references = CODE.findall(row[2])
        assert all(TEST_REFERENCE.fullmatch(ref) for ref in references), references
        for path, name in (TEST_REFERENCE.fullmatch(ref).groups() for ref in references):
            file = ROOT / path
            if not file.is_file() or not re.search(rf"^def {name}\(", file.read_text(), re.M):
                missing.append(f"{path}::{name}")
    assert missing == []


def test_cj_rows_of_the_error_table_are_sqlstate_errors():
    rows = table(doc("errors.md"), "| code | SQLSTATE |")
    documented = {
        row[1].strip("`"): (row[0].strip("`"), int(row[2]))
        for row in rows
        if re.fullmatch(r"`CJ\d{3}`", row[1])
    }
    assert documented == SQLSTATE_ERRORS


def test_every_api_error_code_is_in_the_error_table():
    openapi = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    codes = openapi["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
    documented = {row[0].strip("`") for row in table(doc("errors.md"), "| code | SQLSTATE |")}
    assert set(codes["enum"]) <= documented


def test_every_environment_variable_is_documented():
    documented = {row[0].strip("`") for row in table(doc("configuration.md"), "| variable |")}
    assert set(ENVIRONMENT_VARIABLES) | {"CREDIT_JOBS_DATA_DIR"} <= documented


def test_every_sql_object_of_the_migrations_is_in_the_sql_reference():
    patterns = (
        r"create table public\.(\w+)",
        r"create view public\.(\w+)",
        r"create function public\.(\w+)",
        r"create function credit_jobs_internal\.(\w+)",
        r"create trigger (\w+)",
    )
    names = {name for pattern in patterns for name in re.findall(pattern, MIGRATIONS)}
    documented = {word for code in CODE.findall(doc("sql.md")) for word in re.findall(r"\w+", code)}
    assert {name for name in names if name not in documented} == set()


def test_every_http_target_is_in_the_api_reference():
    tree = ast.parse((ROOT / "functions" / "main.py").read_text())
    targets = {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(ast.unparse(d) == "functions_framework.http" for d in node.decorator_list)
    }
    documented = {row[0].strip("`") for row in table(doc("http-api.md"), "| target |")}
    assert targets == documented


def test_links_between_docs_resolve():
    broken = []
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists() or (anchor and anchor not in heading_anchors(linked)):
                broken.append(f"{page.name}: {target}")
    assert broken == []


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of a markdown page."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}
