"""Catalogs load, every shipped value has a source, and bad input fails with a clear message."""

import json

import pytest

from hermes_jax import (ConfigError, EngineSpec, Parallelism, check_fits, get_hardware, get_model, load_hf_config,
                        static_batch)
from hermes_jax.cli import main
from hermes_jax.stacks.preemption import preempt_schedule, scheduled_time
from hermes_jax.hardware.catalog import FILES, REQUIRED, Catalog, default_catalog, hardware_names
from hermes_jax.models.config import model_names

REQUIRED_DEVICES = {"a100-80gb", "h100-sxm", "h200", "b200", "mi300x", "tpu-v5e", "tpu-v5p", "gaudi3"}
REQUIRED_MODELS = {"llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b",
                   "mixtral-8x7b", "qwen2.5-7b", "qwen2.5-72b", "deepseek-v3", "deepseek-r1", "phi-2",
                   "bge-base-en-v1.5", "bge-reranker-base"}


def test_catalog_covers_required_parts_and_every_value_has_a_source():
    catalog = default_catalog()
    assert REQUIRED_DEVICES <= set(hardware_names())
    assert {"nvlink3", "nvlink4", "nvlink5", "pcie4", "pcie5", "ib-ndr", "roce-200g", "roce-400g"} <= set(catalog.names("link"))
    assert {"xeon-6980p", "grace"} <= set(catalog.names("cpu")) and "cxl-expander" in catalog.names("tier")
    for kind in FILES:
        for name, entry in catalog.entries[kind].items():
            numeric = [k for k in REQUIRED[kind] if isinstance(entry[k], (int, float, dict)) and k not in ("tiers", "devices_per_node", "cpu_sockets")]
            missing = [k for k in numeric if k not in entry.get("sources", {})]
            assert not missing, f"{kind} {name}: no source for {missing}"
    for name in hardware_names():
        get_hardware(name)  # composes with its links, CPU and tiers


def test_model_catalog_and_published_sizes():
    assert REQUIRED_MODELS <= set(model_names())
    published = {"llama-2-7b": 6.74e9, "llama-2-70b": 68.98e9, "llama-3.1-405b": 405.8e9, "mixtral-8x7b": 46.7e9,
                 "deepseek-v3": 671e9, "qwen2.5-7b": 7.62e9, "phi-2": 2.78e9, "bge-base-en-v1.5": 109.5e6,
                 "llama-3.2-1b": 1.236e9, "mixtral-8x22b": 140.6e9, "gemma-2-9b": 9.24e9, "phi-3-mini": 3.82e9}
    for name, count in published.items():
        # BERT-style encoders: position embeddings, pooler and biases (about 1%) are not counted
        tolerance = 0.02 if name.startswith("bge") else 0.01
        assert get_model(name).param_count() == pytest.approx(count, rel=tolerance), name
    # KV bytes per token: GQA (Llama-2-70B: 2 x 80 layers x 8 heads x 128 x 2 B) and MLA (61 x 576 x 2 B)
    assert get_model("llama-2-70b").kv_bytes_per_token("bf16") == 2 * 80 * 8 * 128 * 2
    assert get_model("deepseek-v3").kv_bytes_per_token("bf16") == 61 * (512 + 64) * 2
    assert get_model("llama-2-70b").kv_bytes_per_token("fp8") == 80 * 8 * 128 * 2


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ConfigError, match="known models: .*llama-2-70b"):
        get_model("llama-9")
    with pytest.raises(ConfigError, match="known devices: .*h100-sxm"):
        get_hardware("h900")


def test_non_positive_bandwidth_names_the_field_and_file(tmp_path):
    bad = tmp_path / "hw.toml"
    bad.write_text('[device.my-gpu]\ndevices_per_node = 8\nintra_link = "nvlink4"\ninter_link = "ib-ndr"\n'
                   'host_link = "pcie5"\nhost_cpu = "xeon-8480"\ntiers = { host_dram = "ddr5-host", cxl = "cxl-expander", '
                   'local_ssd = "nvme-gen4-x8", remote_store = "remote-store-400g" }\n'
                   'peak_flops = { bf16 = 1e15 }\nhbm_bandwidth = -3e12\nhbm_capacity = 80e9\n'
                   'power_idle_w = 50\npower_max_w = 700\nprice_per_hour = 2\n')
    catalog = Catalog()
    with pytest.raises(ConfigError, match=r"hw.toml:9 \[my-gpu\] hbm_bandwidth must be > 0"):
        catalog.load_user_file(bad)
    bad.write_text(bad.read_text().replace("-3e12", "3e12").replace("bf16 = 1e15", "bf16 = 0"))
    with pytest.raises(ConfigError, match=r"peak_flops.bf16 must be > 0 FLOP/s"):
        catalog.load_user_file(bad)


def test_user_hardware_file_through_cli(tmp_path, capsys):
    good = tmp_path / "hw.toml"
    good.write_text('[device.my-gpu]\ndevices_per_node = 8\nintra_link = "nvlink4"\ninter_link = "ib-ndr"\n'
                    'host_link = "pcie5"\nhost_cpu = "xeon-8480"\ntiers = { host_dram = "ddr5-host", cxl = "cxl-expander", '
                    'local_ssd = "nvme-gen4-x8", remote_store = "remote-store-400g" }\n'
                    'peak_flops = { bf16 = 2e15 }\nhbm_bandwidth = 6e12\nhbm_capacity = 160e9\n'
                    'power_idle_w = 50\npower_max_w = 700\nprice_per_hour = 2\n')
    assert main(["estimate", "--hardware-file", str(good), "--tp", "2", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["hardware"] == "my-gpu" and row["e2e_s"] > row["prefill_s"] > 0


def test_model_that_does_not_fit_says_how_much_is_missing():
    hw = get_hardware("a100-80gb")
    engine = EngineSpec(get_model("llama-2-70b"), hw.spec, Parallelism(tp=1))
    with pytest.raises(ConfigError, match=r"missing [0-9.]+ GB"):
        check_fits(engine, hw.params, 1, 2048, 256)
    check_fits(EngineSpec(get_model("llama-2-70b"), hw.spec, Parallelism(tp=4)), hw.params, 1, 2048, 256)


def test_malformed_hf_config_names_the_missing_field(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 32000, "intermediate_size": 11008}))
    with pytest.raises(ConfigError, match=r"config.json: missing field 'num_attention_heads'"):
        load_hf_config(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"config.json:1: invalid JSON"):
        load_hf_config(path)


def test_hf_config_loads_like_the_catalog(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256, "max_position_embeddings": 131072}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    model = load_hf_config(path)
    assert model.param_count() == get_model("llama-3.1-8b").param_count()
    assert model.kv_bytes_per_token() == get_model("llama-3.1-8b").kv_bytes_per_token()


def test_cli_grid_echoes_inputs_and_ideal_is_faster(capsys):
    assert main(["estimate", "--model", "llama-2-7b", "--hardware", "a100-80gb", "--tp", "1",
                 "--batch", "1,8", "--prompt", "128,512", "--output", "16", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["batch"], r["prompt"]) for r in rows] == [(1, 128), (1, 512), (8, 128), (8, 512)]
    for r in rows:
        assert {"model", "hardware", "tp", "batch", "prompt", "output", "prefill_s", "decode_step_s", "e2e_s",
                "weights_bytes", "kv_bytes_per_token"} <= set(r)
        assert r["model"] == "llama-2-7b" and r["hardware"] == "a100-80gb" and r["tp"] == 1 and r["output"] == 16
    assert main(["estimate", "--model", "llama-2-7b", "--hardware", "a100-80gb", "--tp", "1", "--ideal", "--json"]) == 0
    ideal = json.loads(capsys.readouterr().out)
    assert main(["estimate", "--model", "llama-2-7b", "--hardware", "a100-80gb", "--tp", "1", "--json",
                 "--stack", "catalog"]) == 0
    real = json.loads(capsys.readouterr().out)
    assert ideal["e2e_s"] < real["e2e_s"] and real["calibrated"] and not ideal["calibrated"]
    # the default is the vLLM stack; on the 80 GB A100 it takes the fit on the same die (40 GB)
    assert main(["estimate", "--model", "llama-2-7b", "--hardware", "a100-80gb", "--tp", "1", "--json"]) == 0
    default = json.loads(capsys.readouterr().out)
    assert default["stack"] == "vllm" and "a100-40gb" in default["efficiency_source"]


def test_cli_errors_exit_2_with_message(capsys):
    assert main(["estimate", "--model", "nope"]) == 2
    assert "known models" in capsys.readouterr().err
    assert main(["estimate", "--tp", "1"]) == 1  # Llama-2-70B on one H100: every grid point impossible
    out = capsys.readouterr()
    assert "no grid point can run" in out.err and "impossible: weights 138.0 GB" in out.out


def test_cli_grid_never_aborts_points_run_as_their_stack_runs_them_or_say_why_not(capsys):
    """One grid with a point that fits, one that overflows the KV cache and one that cannot run: exit
    0, every point reported. vLLM's overflow is costed on its preempting schedule; a waves stack's as
    whole waves plus the partial one."""
    argv = ["estimate", "--model", "llama-2-70b", "--hardware", "a100-80gb", "--tp", "1,2", "--batch", "1,64",
            "--prompt", "2048", "--output", "64", "--stack", "vllm", "--json"]
    assert main(argv) == 0
    rows = {(r["tp"], r["batch"]): r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert len(rows) == 4
    assert rows[(1, 1)]["impossible"] and rows[(1, 1)]["e2e_s"] is None
    fits, over = rows[(2, 1)], rows[(2, 64)]
    assert fits["fits"] and fits["waves"] == 1 and fits["missing_bytes_per_device"] == 0 and fits["overflow"] is None
    assert not over["fits"] and over["missing_bytes_per_device"] > 0 and over["overflow"] == "preempt"
    hw = get_hardware("a100-80gb", stack="vllm")
    engine = EngineSpec(get_model("llama-2-70b"), hw.spec, Parallelism(tp=2))
    schedule = preempt_schedule(over["kv_blocks_per_device"], 16, 64, 2048, 64)
    assert over["e2e_s"] == pytest.approx(float(scheduled_time(engine, hw.params, [schedule]).e2e_s[0]), rel=1e-6)

    assert main(["estimate", "--model", "llama-2-70b", "--hardware", "a100-80gb", "--tp", "2", "--batch", "64",
                 "--prompt", "2048", "--output", "64", "--stack", "trt-llm", "--json"]) == 0
    waved = json.loads(capsys.readouterr().out)
    assert not waved["fits"] and waved["waves"] > 1 and waved["overflow"] == "waves"
    per_wave = waved["per_wave"]
    full, last = divmod(64, per_wave)
    assert waved["waves"] == full + (last > 0)
    hw = get_hardware("a100-80gb", stack="trt-llm")
    engine = EngineSpec(get_model("llama-2-70b"), hw.spec, Parallelism(tp=2))
    expected = full * float(static_batch(engine, hw.params, per_wave, 2048, 64).e2e_s)
    if last:
        expected += float(static_batch(engine, hw.params, last, 2048, 64).e2e_s)
    assert waved["e2e_s"] == pytest.approx(expected, rel=1e-6)
