"""Benchmark specs are typed (bench/spec.py): a bad key or value is one line naming it and its
file."""
import pytest

from dualerase.bench.spec import BenchSpec, read_spec
from dualerase.errors import UsageError


def _spec(tmp_path, text: str) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return str(path)


def test_a_shipped_spec_reads_as_its_typed_parts():
    spec = read_spec("digits-tuned")
    assert isinstance(spec, BenchSpec) and spec.classes == ["3", "0", "7"]
    assert spec.tune.seeds == [100] and spec.tune.fa_target == 0.05 and spec.sweep is None
    assert spec.grid_of("sfron", "dual") == {"erase.forget_lr": [1e-4, 2e-4, 4e-4],
                                             "erase.alpha": [0.5, 1.0]}
    assert read_spec("digits-sensitivity").sweep_key("shared") == "erase.shared_lr"


@pytest.mark.parametrize(("text", "message"), [
    ("methodz: [ga]\n", "unknown key 'methodz'.*did you mean methods"),
    ("methods: ga\n", "methods must be a list, got 'ga' \\(in .*spec.yaml\\)"),
    ("seeds: [-1]\n", "seeds must be >= 0, got -1"),
    ("optimizers: [duel]\n", "optimizers\\[0\\] = 'duel' is not valid.*dual"),
    ("tune: {fa_target: 2}\n", "tune.fa_target must be in \\[0, 1\\], got 2"),
    ("tune: {seeds: [0]}\nseeds: [0]\n", "tuning seeds must never be reporting seeds"),
    ("tune: {grid: {ga: {erase.forget_lr: 1e-4}}}\n",
     "tune.grid.ga .* must map config keys to lists"),
    ("sweep: {key: erase.forget_lr, values: []}\n", "sweep.values .* must be a list of finite"),
    ("overrides: [seed=1]\n", "unknown key 'overrides'"),
])
def test_a_bad_spec_is_one_line_naming_the_key(tmp_path, text, message):
    with pytest.raises(UsageError, match=message):
        read_spec(_spec(tmp_path, text))
