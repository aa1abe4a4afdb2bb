"""RunConfig: presets, YAML files, overrides and the exact errors for bad values."""

from pathlib import Path

import pytest
import yaml

from mtlib.config import PRESETS, ConfigError, dump_config, load_config, to_dict

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_file_equals_preset(name):
    assert load_config(ROOT / "configs" / f"{name}.yaml") == load_config(name)


def test_presets_follow_the_reference_cli_defaults():
    cfg = load_config("multitalk-480")
    g = cfg.generation
    assert (
        g.sampling_steps,
        g.text_guide_scale,
        g.audio_guide_scale,
        g.seed,
        g.frame_num,
        g.motion_frame,
    ) == (40, 5.0, 4.0, 42, 81, 25)
    assert g.resolved_shift(cfg.model.size) == 7.0
    assert load_config("multitalk-720").generation.resolved_shift("multitalk-720") == 11.0
    assert g.color_correction_strength == 1.0
    tiny = load_config("tiny")
    assert (tiny.model.name, tiny.model.device, tiny.model.precision, tiny.model.buckets) == (
        "tiny",
        "cpu",
        "fp32",
        "tiny",
    )


def test_dump_then_load_round_trip(tmp_path):
    cfg = load_config("tiny", ["generation.seed=7", "inputs.audio=[a.wav, b.wav]"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert again == cfg
    assert again.inputs.audio == ("a.wav", "b.wav") and again.generation.seed == 7


def test_base_preset_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"base": "tiny", "generation": {"sampling_steps": 2}}))
    cfg = load_config(path)
    assert cfg.model.name == "tiny" and cfg.generation.sampling_steps == 2


def test_replace_with_dotted_keys():
    cfg = load_config("tiny").replace(**{"generation.seed": 3, "model.precision": "reference"})
    assert cfg.generation.seed == 3 and cfg.model.precision == "reference"
    assert to_dict(cfg)["generation"]["seed"] == 3


BAD = [
    (
        {"generation": {"framenum": 81}},
        "config: generation.framenum: unknown key. Did you mean 'frame_num'? Allowed keys here: mode, "
        "frame_num, short_audio, motion_frame, max_frames_num, sampling_steps, text_guide_scale, "
        "audio_guide_scale, shift, seed, color_correction_strength, use_apg, apg_momentum, "
        "apg_norm_threshold, teacache, teacache_thresh, face_scale, fps, noise, noise_trace.",
    ),
    (
        {"generation": {"frame_num": "abc"}},
        "config: generation.frame_num: expected an integer or 'auto', got 'abc' (str).",
    ),
    (
        {"generation": {"sampling_steps": -3}},
        "config: generation.sampling_steps: must be >= 1, got -3 (int).",
    ),
    (
        {"model": {"buckets": "large"}},
        "config: model.buckets: expected 'official' or 'tiny', got 'large' (str).",
    ),
    (
        {"generation": {"use_apg": "yes"}},
        "config: generation.use_apg: expected true or false, got 'yes' (str).",
    ),
    (
        {"inputs": {"audio": "one.wav"}},
        "config: inputs.audio: expected a list, got 'one.wav' (str).",
    ),
    (
        {"generation": {"color_correction_strength": 2}},
        "config: generation.color_correction_strength: must be between 0 and 1, got 2 (int).",
    ),
    ({"trace": "full"}, "config: trace: expected a mapping, got 'full' (str)."),
]


@pytest.mark.parametrize("data,message", BAD, ids=[m.split(":")[1].strip() for _, m in BAD])
def test_bad_config_gives_one_readable_error(data, message):
    with pytest.raises(ConfigError) as e:
        load_config(data)
    assert str(e.value) == message


def test_bad_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("base: tiny\ngeneration:\n  sampling_steps: -1\n")
    with pytest.raises(
        ConfigError, match=r"bad\.yaml: generation\.sampling_steps: must be >= 1, got -1"
    ):
        load_config(path)


def test_unknown_preset_or_file():
    with pytest.raises(
        ConfigError,
        match="no such file and no preset of that name. Presets: tiny, multitalk-480, multitalk-480-lightx2v, multitalk-480-fusionx, multitalk-720.",
    ):
        load_config("nope")


def test_override_syntax_error():
    with pytest.raises(ConfigError, match=r"override 'seed': expected key.path=value"):
        load_config("tiny", ["seed"])


def test_override_off_is_a_string_not_yaml11_false():
    # YAML 1.1 reads `off` as False: `-p trace.level=off` must still mean the level 'off'
    assert load_config("tiny", ["trace.level=off"]).trace.level == "off"
    assert load_config("tiny", ["generation.use_apg=true"]).generation.use_apg is True
    with pytest.raises(ConfigError) as e:
        load_config("tiny", ["generation.use_apg=yes"])
    assert (
        str(e.value)
        == "preset 'tiny': generation.use_apg: expected true or false, got 'yes' (str)."
    )
