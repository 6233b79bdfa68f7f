"""docs/reference/files.md is generated from the pydantic schemas and must not drift from them."""

from __future__ import annotations

from dsbench import experiment, schema_docs, sweep
from dsbench.training import train_file
from dsbench.training.diffsparse import TrainConfig


def test_committed_page_is_up_to_date():
    committed = schema_docs.OUTPUT.read_text()
    assert committed == schema_docs.render(), "docs/reference/files.md is stale: run `python -m dsbench.schema_docs`"


def test_every_field_has_a_row_with_its_description():
    text = schema_docs.OUTPUT.read_text()
    models = [
        experiment.Experiment,
        experiment.EvalSet,
        experiment.Budget,
        experiment.Latency,
        experiment.MethodEntry,
        sweep.Sweep,
        sweep.Study,
        sweep.FloatParam,
        sweep.IntParam,
        sweep.CategoricalParam,
        sweep.Objective,
        train_file.TrainFile,
        train_file.Defaults,
        train_file.Entry,
        train_file.Match,
        TrainConfig,
    ]
    for model in models:
        section = text.split(f"({model.__name__})\n", 1)
        assert len(section) == 2, f"no section for {model.__name__}"
        table = section[1].split("\n#", 1)[0]
        for name, info in model.model_fields.items():
            row = next((line for line in table.splitlines() if line.startswith(f"| `{name}` |")), None)
            assert row is not None, f"{model.__name__}.{name} has no row"
            if info.description:
                assert " ".join(info.description.split()).replace("|", "\\|") in row
    # a description, a range, a default and an allowed-values list, as a reader sees them
    assert "| `size` | int | `16` | [1, 100000] | number of evaluation samples per run" in text
    assert "one of `ddim-linspace`, `ddim`, `dpm-solver++`, `euler`, or null" in text
    assert "| `sampler` | `tpe` \\| `random` \\| `nsga2` | `tpe` |" in text


def test_examples_are_copied_from_real_files():
    text = schema_docs.OUTPUT.read_text()
    for fmt in schema_docs.formats():
        assert fmt.examples
        for example in fmt.examples:
            assert f"Example (`{example}`)" in text
            assert (schema_docs.ROOT / example).read_text().rstrip() in text


def test_check_flags_a_stale_page(tmp_path, capsys):
    page = tmp_path / "files.md"
    assert schema_docs.main(["--output", str(page)]) == 0
    assert schema_docs.main(["--check", "--output", str(page)]) == 0
    page.write_text(page.read_text().replace("number of evaluation samples", "samples"))
    assert schema_docs.main(["--check", "--output", str(page)]) == 1
    assert "stale" in capsys.readouterr().err
