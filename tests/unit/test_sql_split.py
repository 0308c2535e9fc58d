"""The statement splitter must cut a file exactly where the Supabase CLI does."""

from __future__ import annotations

import pytest

from shared.migrate import split_statements


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        pytest.param("", [], id="empty"),
        pytest.param(" \n\t\n", [], id="blank"),
        pytest.param(
            "create table a (x int);\n\ncreate table b (y int);\n",
            ["create table a (x int)", "create table b (y int)"],
            id="trims-semicolon-and-blanks",
        ),
        pytest.param("select 1", ["select 1"], id="no-final-semicolon"),
        pytest.param("select 1;;\n;select 2 ;", ["select 1", "select 2"], id="empty-statements"),
        pytest.param(
            "-- header\nselect 1;",
            ["-- header\nselect 1"],
            id="leading-comment-kept",
        ),
        pytest.param(
            "select 1; -- a; b\nselect 2;",
            ["select 1", "-- a; b\nselect 2"],
            id="semicolon-in-line-comment",
        ),
        pytest.param(
            "select 1;\n-- the end\n",
            ["select 1", "-- the end"],
            id="trailing-comment-is-a-statement",
        ),
        pytest.param(
            "/* a; /* nested; */ still; */ select 1; select 2",
            ["/* a; /* nested; */ still; */ select 1", "select 2"],
            id="nested-block-comment",
        ),
        pytest.param(
            "select 'a;''b';select 2",
            ["select 'a;''b'", "select 2"],
            id="single-quotes",
        ),
        pytest.param(
            "select E'a\\';b'; select 2",
            ["select E'a\\';b'", "select 2"],
            id="escape-string",
        ),
        pytest.param(
            "select 'a\\'; select 2",
            ["select 'a\\'", "select 2"],
            id="backslash-is-literal-in-standard-string",
        ),
        pytest.param(
            'select 1 as "a;""b"; select 2',
            ['select 1 as "a;""b"', "select 2"],
            id="double-quotes",
        ),
        pytest.param(
            "create function f() returns int language plpgsql as $$\n"
            "begin return 1; end;\n$$;\nselect 2;",
            [
                "create function f() returns int language plpgsql as $$\nbegin return 1; end;\n$$",
                "select 2",
            ],
            id="dollar-quote",
        ),
        pytest.param(
            "do $body$ begin perform $$;'$$; end $body$; select 1",
            ["do $body$ begin perform $$;'$$; end $body$", "select 1"],
            id="tagged-dollar-quote-containing-dollars",
        ),
        pytest.param(
            "prepare p as select $1; select 2",
            ["prepare p as select $1", "select 2"],
            id="positional-parameter-is-not-a-quote",
        ),
        pytest.param(
            "select a$b$c from t; select 2",
            ["select a$b$c from t", "select 2"],
            id="dollar-inside-identifier",
        ),
        pytest.param(
            "create rule r as on insert to t do also (insert into u values (1); "
            "insert into v values (2)); select 3",
            [
                "create rule r as on insert to t do also (insert into u values (1); "
                "insert into v values (2))",
                "select 3",
            ],
            id="parentheses",
        ),
        pytest.param(
            "create function f() returns int language sql\nbegin atomic\n  select 1;\n"
            "  select case when true then 2 end;\nend;\nselect 3;",
            [
                "create function f() returns int language sql\nbegin atomic\n  select 1;\n"
                "  select case when true then 2 end;\nend",
                "select 3",
            ],
            id="begin-atomic-body",
        ),
        pytest.param(
            "do $$ begin raise notice '%;'; end $$; select 'unterminated;",
            ["do $$ begin raise notice '%;'; end $$", "select 'unterminated"],
            id="unterminated-quote-runs-to-eof",
        ),
    ],
)
def test_split(sql: str, expected: list[str]) -> None:
    assert split_statements(sql) == expected


def test_keeps_text_verbatim() -> None:
    sql = "  -- note\n  create table t (\n    a int   -- why\n  );\n"
    assert split_statements(sql) == ["-- note\n  create table t (\n    a int   -- why\n  )"]
