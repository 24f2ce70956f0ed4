import pytest

from configs import ConfigError, load_config, preset_names
from configs.schema import BackboneKind, IndexKind


def test_presets_load():
    assert {"tiny", "small"} <= set(preset_names())
    small = load_config("small")
    assert small.expert.backbone.kind is BackboneKind.tf_efficientnet_lite0
    assert small.paths.home.is_absolute()


def test_override_parsed_as_yaml():
    cfg = load_config("tiny", ["expert.coreset_ratio=0.5", "expert.index.kind=hnsw", "expert.backbone.layers=[0, 2]"])
    assert cfg.expert.coreset_ratio == 0.5
    assert cfg.expert.index.kind is IndexKind.hnsw
    assert cfg.expert.backbone.layers == (0, 2)


@pytest.mark.parametrize(
    "override, key",
    [
        ("expert.coreset_ratio=2", "expert.coreset_ratio"),
        ("expert.colour=1", "expert.colour: unknown key"),
        ("expert.index.kind=annoy", "expert.index.kind"),
        ("expert.neighbourhood=4", "expert"),
        ("expert.backbone.layers=[2, 1]", "expert.backbone.layers"),
        ("expert.shards=0", "expert.shards"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    assert key in str(err.value)


def test_bad_sources(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        load_config("huge")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("expert: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config("tiny", ["expert.coreset_ratio"])


def test_yaml_file_and_missing_section(tmp_path):
    path = tmp_path / "line.yaml"
    path.write_text("preset: custom\n")
    with pytest.raises(ConfigError, match="expert: Field required"):
        load_config(path)
