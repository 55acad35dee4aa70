import pytest

from ddkit.runs.params import KNOWN, Choice, Range, Rule, as_constraint, check_params, check_rules, parameters_cell, \
    rule_names

GOOD = dict(dataset="mnist5k", data_root="", ipc=10, model="ConvNet", iterations=5, seed=0, device="auto",
            eval_model="ConvNet", eval_epochs=3, num_eval=1, run_name="", results_dir="", batch_real=8,
            lr_img=1.0, lam=0.5, mode="a", ipcs=[1, 10])
CHECKS = {"lam": Range(0), "mode": Choice("a", "b"), "ipcs": Range(1)}  # the other keys: KNOWN


def ns(**over):
    return {**GOOD, **over}


def check(space, **kw):
    return check_params(space, CHECKS, defaults=GOOD, **kw)


def test_good_params_pass_and_convert():
    P = check(ns(lr_img=1))
    assert P.ipc == 10 and isinstance(P.lr_img, float) and P.as_dict()["mode"] == "a"


@pytest.mark.parametrize("key,value,match", [
    ("ipc", 0, "ipc=0 is too small; expected >= 1"),
    ("ipc", "10", "ipc must be int, got str '10'"),
    ("ipc", True, "ipc must be int"),
    ("iterations", -1, "iterations=-1"),
    ("dataset", "imagenet", "unknown dataset"),
    ("model", "ResNet999", "unknown model"),
    ("eval_model", "convnet3", "unknown model"),
    ("device", "gpu", "device='gpu'"),
    ("lr_img", 0.0, "lr_img=0.0 is too small; expected > 0"),
    ("lr_img", "1.0", "lr_img must be float"),
    ("lam", -0.1, "lam=-0.1 is too small"),
    ("lam", float("nan"), "lam=nan is not a finite number"),
    ("lam", float("inf"), "lam=inf is not a finite number"),
    ("mode", "c", "mode='c' is not allowed; expected one of \\['a', 'b'\\]"),
    ("run_name", "../x", "run_name"),
    ("data_root", None, "data_root must be str"),
    ("ipcs", [1, "a"], r"ipcs\[1\] must be int"),
    ("ipcs", [0], "ipcs=0 is too small"),
    ("ipcs", 1, "ipcs must be list"),
])
def test_bad_values_name_the_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        check(ns(**{key: value}))


def test_missing_key():
    bad = ns()
    del bad["seed"]
    with pytest.raises(ValueError, match="seed"):
        check(bad)


def test_a_constraint_for_a_key_the_cell_lacks_is_refused():
    with pytest.raises(ValueError, match=r"constraints for \['nope'\]"):
        check_params(ns(), {"nope": Range(0)}, defaults=GOOD)


def test_unknown_injected_key_is_reported_with_suggestion():
    space = ns(In=["", "# Parameters\nlr_imgg = 2.0\nipc = 1\n"])
    space["lr_imgg"] = 2.0
    with pytest.raises(ValueError, match="did you mean 'lr_img'"):
        check(space)
    with pytest.raises(ValueError, match="unknown parameter"):
        check(ns(), extra={"typo": 1})


def test_types_come_from_the_parameters_cell_in_the_history():
    """Inside IPython the defaults are the first all-literal cell of ``In``: papermill's injected cell
    (after it) cannot change a key's type."""
    cell = 'ipc = 10  # images per class\nlr = 1.0\nnames = ["a"]\n'
    assert parameters_cell({"In": ["", "import math", cell, "# Parameters\nipc = 2\n"]}) == \
        {"ipc": 10, "lr": 1.0, "names": ["a"]}
    space = {"In": ["", cell, '# Parameters\nipc = "2"\n'], "ipc": "2", "lr": 1, "names": ["b"]}
    with pytest.raises(ValueError, match="ipc must be int, got str '2'"):
        check_params(space, {"ipc": Range(1)})
    assert check_params({**space, "ipc": 2}, {"ipc": Range(1)}).lr == 1.0


def test_a_script_without_history_takes_its_values_types():
    import math
    P = check_params({"ipc": 3, "math": math, "_x": 1}, {"ipc": Range(1)})
    assert P.as_dict() == {"ipc": 3}
    with pytest.raises(ValueError, match="ipc=0 is too small"):
        check_params({"ipc": 0}, {"ipc": Range(1)})


def test_rule_of_a_default():
    assert Rule.of([0.0, 1]).validate("b", [0, 0.5]) == [0.0, 0.5]
    assert Rule.of(None).validate("x", object) is object
    with pytest.raises(ValueError, match=r"b=1.0 is too large; expected < 1"):
        Rule.of([0.5], Range(0, 1, hi_open=True)).validate("b", [0.5, 1.0])


def test_known_keys_are_checked_without_being_listed_and_a_notebook_may_override_them():
    assert {"ipc", "lr_img", "compile", "idm_max_nets"} <= set(KNOWN)
    with pytest.raises(ValueError, match="compile='fast' is not allowed"):
        check_params({"compile": "fast"}, {}, defaults={"compile": "auto"})
    assert check_params({"lr_img": 0.0}, {"lr_img": Range(0)}, defaults={"lr_img": 1.0}).lr_img == 0.0
    with pytest.raises(ValueError, match="lr_img=0.0 is too small"):
        check_params({"lr_img": 0.0}, {}, defaults={"lr_img": 1.0})


RULES = {"not use_cm or ipc * factor ** 2 >= 2": "the covariance term needs 2 samples per class"}


@pytest.mark.parametrize("ipc, factor, use_cm, ok", [(1, 1, True, False), (1, 2, True, True), (2, 1, True, True),
                                                      (1, 1, False, True)])
def test_rules_hold_or_name_the_values_they_read(ipc, factor, use_cm, ok):
    defaults = {"ipc": 1, "factor": 1, "use_cm": True}
    space = {"ipc": ipc, "factor": factor, "use_cm": use_cm}
    if ok:
        assert check_params(space, {}, RULES, defaults=defaults).ipc == ipc
    else:
        with pytest.raises(ValueError, match=r"2 samples per class \(rule: .*; here use_cm=True, ipc=1, factor=1\)"):
            check_params(space, {}, RULES, defaults=defaults)


@pytest.mark.parametrize("rule, match", [
    ("__import__('os')", "not allowed"), ("ipc.bit_length() > 0", "not allowed"), ("lambda: 1", "not allowed"),
    ("ipc >", "not a Python expression"), ("open('x')", "not allowed"), ("len(x=ipc)", "not allowed"),
])
def test_a_rule_is_an_expression_over_parameters_only(rule, match):
    with pytest.raises(ValueError, match=match):
        rule_names(rule)


def test_a_rule_reading_an_unknown_name_is_an_error_and_functions_are_not_names():
    assert rule_names("len(set(objs)) == len(objs) and max(a, 1) > 0") == ["objs", "a"]
    with pytest.raises(ValueError, match=r"reads \['nope'\]"):
        check_rules({"ipc": 1}, {"nope > 1": "x"})


def test_an_item_of_another_type_in_an_empty_list_default_is_refused():
    """An empty list default gives no item type: the constraint still refuses what it cannot check."""
    from ddkit.runs.params import Model
    with pytest.raises(ValueError, match=r"models=1 is not a str"):
        Rule.of([], Model()).validate("models", ["ConvNet", 1])
    with pytest.raises(ValueError, match=r"ipcs='1' is not a number"):
        Rule.of([], Range(1)).validate("ipcs", ["1"])


@pytest.mark.parametrize("text, expected", [
    ("[0, inf)", Range(0)), ("(0, inf)", Range(0, lo_open=True)), ("[0, 1)", Range(0, 1, hi_open=True)),
    ("(-1, 1]", Range(-1, 1, lo_open=True)), ("[-inf, 2.5]", Range(None, 2.5)), ("[1e-3, 1]", Range(0.001, 1)),
])
def test_an_interval_literal_is_the_range_it_reads(text, expected):
    assert as_constraint(text) == expected


def test_literal_constraints_check_like_their_objects():
    ns = {"tau": 0.0, "form": "exp", "beta": 0.5}
    checks = {"tau": "(0, inf)", "form": ["squared", "exp"], "beta": "[0, 1)"}
    with pytest.raises(ValueError, match=r"tau.*expected > 0"):
        check_params(ns, checks, defaults=dict(ns))
    with pytest.raises(ValueError, match=r"form.*expected one of \['squared', 'exp'\]"):
        check_params(ns, checks, defaults=dict(ns), extra={"tau": 1.0, "form": "cube"})
    assert check_params(ns, checks, defaults=dict(ns), extra={"tau": 1.0, "beta": 0.0}).beta == 0.0
    for bad in ("0..1", "[2, 1]", 3, "[0, 1"):
        with pytest.raises(ValueError, match="interval|constraint"):
            as_constraint(bad)
