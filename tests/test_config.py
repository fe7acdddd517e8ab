import ml_collections
import pytest

from m4.config import ConfigError, apply_overrides, load_config, split_config_args


def _config():
    c = ml_collections.ConfigDict()
    c.lr = 1e-3
    c.steps = 10
    c.name = "tiny"
    c.use_ema = False
    c.shape = (8, 8)
    c.model = ml_collections.ConfigDict({"dim": 64, "depth": 2})
    return c


def test_overrides_are_typed_like_the_field():
    c = _config()
    apply_overrides(c, ["lr=3", "steps=20", "name=base", "use_ema=True", "shape=(4, 4)",
                        "--config.model.dim=128"])
    assert c.lr == 3.0 and isinstance(c.lr, float)
    assert c.steps == 20 and c.name == "base" and c.use_ema is True
    assert c.shape == (4, 4) and c.model.dim == 128


@pytest.mark.parametrize("item, message", [
    ("lrr=1", "no field 'lrr'"),
    ("model.width=3", "no field 'width'"),
    ("steps=1.5", "expected int"),
    ("use_ema=1", "expected bool"),
    ("steps", "expected key=value"),
    ("nested.x=1", "no field 'nested'"),
])
def test_bad_overrides_name_the_field(item, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(_config(), [item])


def test_load_config_from_file(tmp_path):
    f = tmp_path / "exp.py"
    f.write_text(
        "import ml_collections\n"
        "def get_config(arg=None):\n"
        "    c = ml_collections.ConfigDict()\n"
        "    c.size = arg or 'tiny'\n"
        "    c.batch = 8\n"
        "    return c\n")
    c = load_config(f"{f}:base", ["batch=16"])
    assert c.size == "base" and c.batch == 16
    with pytest.raises(ConfigError, match="file not found"):
        load_config(str(tmp_path / "missing.py"))


def test_split_config_args():
    rest, overrides = split_config_args(["--workdir", "x", "--config.lr=1", "--n", "3"])
    assert rest == ["--workdir", "x", "--n", "3"] and overrides == ["--config.lr=1"]
