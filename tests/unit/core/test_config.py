import subprocess
import sys

import pytest

from alignloop.cli.main import build_parser, main, parse
from alignloop.core.config import ConfigError
from alignloop.generation.config import GenerateConfig
from alignloop.trainers.config import SFTConfig


def test_every_invalid_value_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as err:
        parse(["sft", "--batch-size", "0", "--learning-rate", "-1", "--max-length", "0"])
    assert str(err.value) == (
        "invalid sft config (5 problems):\n"
        "  - data: a training data file is required (--data FILE)\n"
        "  - output: an output folder is required (--output DIR)\n"
        "  - batch_size: must be > 0, got 0\n"
        "  - max_length: must be > 0, got 0\n"
        "  - learning_rate: must be > 0, got -1.0")


def test_yaml_keys_are_the_flags_and_flags_override(tmp_path, sft_file):
    cfg_file = tmp_path / "sft.yaml"
    cfg_file.write_text(f"model: tiny\ndata: {sft_file}\noutput: {tmp_path}/out\n"
                        "max-steps: 3\nbatch_size: 2\nlora: true\n")
    _, cfg = parse(["sft", "--config", str(cfg_file), "--batch-size", "5"])
    assert (cfg.model, cfg.max_steps, cfg.batch_size, cfg.lora) == ("tiny", 3, 5, True)


def test_unknown_yaml_key_and_bad_yaml_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("modle: tiny\n")
    with pytest.raises(ConfigError, match=r"unknown key 'modle'"):
        SFTConfig.load(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [tiny\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: not valid YAML"):
        SFTConfig.load(broken)


def test_string_values_are_converted_and_type_errors_named():
    with pytest.raises(ConfigError, match=r"max_steps: expected an integer, got 'ten'"):
        SFTConfig.from_dict({"max_steps": "ten"})
    cfg = SFTConfig.from_dict({"max_steps": "10", "lora": "true", "learning_rate": "1e-4"})
    assert (cfg.max_steps, cfg.lora, cfg.learning_rate) == (10, True, 1e-4)


def test_resolved_config_round_trips_through_yaml(tmp_path, sft_file):
    cfg = SFTConfig(model="tiny", data=str(sft_file), output=str(tmp_path / "o")).validate()
    path = cfg.save(tmp_path)
    again = SFTConfig.load(path)
    assert again == cfg


def test_help_lists_every_stage_without_importing_torch():
    code = ("import sys; from alignloop.cli.main import main; main(['--help']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("NO-TORCH")
    for word in ("sft", "generate", "reward train", "dpo", "ppo", "grpo", "rloo", "label serve", "judge", "loop",
                 "eval", "serve", "models list", "launch", "demo"):
        assert f"  {word} " in out


def test_stage_help_documents_every_field(capsys):
    for cls in (SFTConfig, GenerateConfig):
        text = build_parser(cls).format_help()
        import dataclasses

        for f in dataclasses.fields(cls):
            assert f"--{f.name.replace('_', '-')}" in text
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


def test_cli_reports_config_errors_with_exit_2(capsys):
    assert main(["generate", "--num-completions", "0"]) == 2
    err = capsys.readouterr().err
    assert "num_completions: must be > 0" in err and "prompts: a prompts file is required" in err
