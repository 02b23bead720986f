"""Golden files: registry content in ``testdata/in``, Envoy resources in ``testdata/out``.

``UPDATE_GOLDEN=1 pytest tests/unit/test_translate_golden.py`` rewrites the expected files;
review the diff before committing it.
"""

from __future__ import annotations

import pytest

from tests.support.golden import (
    KINDS,
    TESTDATA,
    cases,
    dump,
    load_entries,
    out_path,
    read_expected,
    rendered,
    translate,
    update_requested,
)

# Cases that hold rejected entries on purpose, with the (key, field) of each problem.
EXPECTED_PROBLEMS: dict[str, set[tuple[str, str]]] = {
    "bad_entries": {
        ("/mesh/services/default/broken", ""),
        ("/mesh/services/default/typo", "prot"),
        ("/mesh/endpoints/default/web/bad-weight", "weight"),
        ("/mesh/endpoints/default/ghost/e1", ""),
        ("/mesh/listeners/bad-tcp", "service"),
        ("/mesh/routes/default/missing-service", "destinations[0].service"),
        ("/mesh/routes/default/missing-subset", "destinations[0].subset"),
        ("/mesh/routes/default/bad-regex", "match.regex"),
        ("/mesh/Bad-Key/x", ""),
    },
    "authz_policies": {
        ("/mesh/policies/auth/ghost", "target"),
        ("/mesh/policies/auth/tcp", "target"),
    },
}


@pytest.mark.parametrize("case", cases())
def test_golden(case: str) -> None:
    _, translator, _ = translate(load_entries(case))
    actual = rendered(translator)
    if update_requested():
        for kind in KINDS:
            out_path(case, kind).write_text(dump(actual[kind]))
    for kind in KINDS:
        assert out_path(case, kind).exists(), f"{case}.{kind}: run with UPDATE_GOLDEN=1"
        expected = read_expected(case, kind)
        assert actual[kind] == expected, f"{case}.{kind} differs (UPDATE_GOLDEN=1 rewrites)"


@pytest.mark.parametrize("case", cases())
def test_golden_inputs_have_only_the_intended_problems(case: str) -> None:
    state, _, _ = translate(load_entries(case))
    problems = {(key, p.field) for key, p in state.problems.items()}
    assert problems == EXPECTED_PROBLEMS.get(case, set())


def test_every_expected_file_belongs_to_a_case() -> None:
    names = set(cases())
    assert len(names) >= 8
    for path in (TESTDATA / "out").glob("*.yaml"):
        case, kind = path.name.removesuffix(".yaml").rsplit(".", 1)
        assert case in names and kind in KINDS, f"stale golden file {path.name}"


def test_resources_are_sorted_by_name() -> None:
    _, translator, _ = translate(load_entries("route_matching"))
    for kind, items in rendered(translator).items():
        key = "cluster_name" if kind == "endpoints" else "name"
        names = [item[key] for item in items]
        assert names == sorted(names)
        assert names, kind
