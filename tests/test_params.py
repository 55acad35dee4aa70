import pytest

from ddkit.runs.params import COMMON, DM_FAMILY, Param, check_params, require

GOOD = dict(dataset="mnist5k", data_root="", ipc=10, model="ConvNet", iterations=5, seed=0, device="auto",
            eval_model="ConvNet", eval_epochs=3, num_eval=1, run_name="", results_dir="", batch_real=8,
            lr_img=1.0)
SPEC = {**COMMON, **DM_FAMILY, "lam": Param(float, min=0), "mode": Param(str, choices=("a", "b"))}


def ns(**over):
    return {**GOOD, "lam": 0.5, "mode": "a", **over}


def test_good_params_pass_and_convert():
    P = check_params(ns(lr_img=1), SPEC)
    assert P.ipc == 10 and isinstance(P.lr_img, float) and P.as_dict()["mode"] == "a"


@pytest.mark.parametrize("key,value,match", [
    ("ipc", 0, "ipc=0 is too small"),
    ("ipc", "10", "ipc must be int"),
    ("ipc", True, "ipc must be int"),
    ("iterations", -1, "iterations=-1"),
    ("dataset", "imagenet", "unknown dataset"),
    ("model", "ResNet999", "unknown model"),
    ("eval_model", "convnet3", "unknown model"),
    ("device", "gpu", "device='gpu'"),
    ("lr_img", 0.0, "lr_img=0.0 is too small"),
    ("lam", -0.1, "lam=-0.1 is too small"),
    ("mode", "c", "expected one of \\['a', 'b'\\]"),
    ("run_name", "../x", "run_name"),
])
def test_bad_values_name_the_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        check_params(ns(**{key: value}), SPEC)


def test_missing_key():
    bad = ns()
    del bad["seed"]
    with pytest.raises(ValueError, match="seed"):
        check_params(bad, SPEC)


def test_unknown_injected_key_is_reported_with_suggestion():
    space = ns(In=["", "# Parameters\nlr_imgg = 2.0\nipc = 1\n"])
    space["lr_imgg"] = 2.0
    with pytest.raises(ValueError, match="did you mean 'lr_img'"):
        check_params(space, SPEC)
    with pytest.raises(ValueError, match="unknown parameter"):
        check_params(ns(), SPEC, extra={"typo": 1})


def test_modules_and_ipython_names_are_ignored():
    import math
    space = ns(math=math, In=["x = 1"], Out={}, SPEC=SPEC, _private=3)
    assert check_params(space, SPEC).ipc == 10


def test_list_params():
    spec = {"ipcs": Param(list, item=int, min=1)}
    assert check_params({"ipcs": [1, 10]}, spec).ipcs == [1, 10]
    with pytest.raises(ValueError, match=r"ipcs\[1\] must be int"):
        check_params({"ipcs": [1, "a"]}, spec)
    with pytest.raises(ValueError, match="too small"):
        check_params({"ipcs": [0]}, spec)


def test_require():
    require(True, "never")
    with pytest.raises(ValueError, match="IPC 1"):
        require(False, "IPC 1 has no covariance")
