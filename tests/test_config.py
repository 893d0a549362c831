import pytest

from segbench.config import Config, ConfigError, config_from_dict, load_config, to_yaml


def test_defaults_and_round_trip(tmp_path):
    cfg = load_config()
    assert cfg == Config() and cfg.data.source == "brain-mri" and cfg.train.optimizer == "auto"
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg


def test_preset_then_overrides(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        "model:\n  arch: pspnet\n  options: {encoder: resnet18, aux_head: true}\n"
        "train:\n  iterations: 100\n  lr: 0.02\n"
        "data:\n  augment: {crop_size: [64, 64]}\n"
    )
    cfg = load_config(
        preset,
        ["train.lr=1e-3", "model.options.output_stride=8", "eval.window=[32, 48]", "eval.flips=[horizontal]",
         "train.class_weights=[1, 2.5]", "data.augment.hflip=0", "train.channels_last=false", "model.pretrained=w.pt"],
    )
    assert cfg.model.arch == "pspnet" and cfg.train.iterations == 100
    assert cfg.model.options == {"encoder": "resnet18", "aux_head": True, "output_stride": 8}
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.eval.window == (32, 48) and cfg.eval.flips == ("horizontal",)
    assert cfg.train.class_weights == [1.0, 2.5] and cfg.train.channels_last is False
    assert cfg.data.augment.crop_size == (64, 64) and cfg.data.augment.hflip == 0.0
    assert cfg.model.pretrained == "w.pt"
    assert config_from_dict(__import__("yaml").safe_load(to_yaml(cfg))) == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("trian.lr=0.1", "unknown key 'trian'. Did you mean 'train'?"),
        ("train.lerning_rate=0.1", "unknown key 'train.lerning_rate'"),
        ("train.iteration=5", "Did you mean 'iterations'?"),
        ("data.augment.crop=[8, 8]", "unknown key 'data.augment.crop'. Did you mean 'crop_size'?"),
        ("train.lr=fast", "train.lr: expected a number, got 'fast'"),
        ("train.iterations=1.5", "train.iterations: expected an integer"),
        ("train.optimizer=adam", "'adam' is not one of 'auto', 'sgd', 'adamw'"),
        ("eval.window=[1, 2, 3]", "eval.window: expected 2 values, got 3"),
        ("train.lr.peak=1", "train.lr is not a section"),
        ("train.lr", "must look like key=value"),
        ("data.augment.hflip=2", "hflip is a probability"),
        ("eval.nsd_tolerance=-1", "nsd_tolerance=-1.0 must be >= 0"),
    ],
)
def test_bad_overrides_are_explained(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="no configuration file"):
        load_config(tmp_path / "missing.yaml")
    layered = tmp_path / "layered.yaml"
    layered.write_text("_base_: other.yaml\ntrain: {lr: 0.1}\n")  # no inheritance chains
    with pytest.raises(ConfigError, match="unknown key '_base_'"):
        load_config(layered)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(scalar)


def test_configs_are_frozen():
    cfg = load_config()
    with pytest.raises(AttributeError):
        cfg.train.lr = 1.0  # type: ignore[misc]


def test_a_bare_off_is_the_word_where_the_key_takes_words():
    # YAML 1.1 reads `off` as False; train.amp's choices are words, train.deterministic's a boolean.
    cfg = load_config(None, ["train.amp=off", "train.deterministic=off"])
    assert cfg.train.amp == "off" and cfg.train.deterministic is False
