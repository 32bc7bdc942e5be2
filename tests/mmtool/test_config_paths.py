"""Configs from any folder: recipes by name, paths in a user's YAML from its folder, bundled DeepSpeed configs."""
from pathlib import Path

import pytest

from mmtool import recipes
from mmtool.config import load_config, to_yaml
from mmtool.errors import MmtoolError
from mmtool.pipeline import PipelineConfig
from stage1_clip.config import ClipConfig
from stage2_projector.config import AlignConfig
from stage3_llm.config import FinetuneConfig

CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """An unrelated current folder."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.mark.parametrize("value", ["tiny_vit", "tiny_vit.yaml", "configs/clip/tiny_vit.yaml"])
def test_a_recipe_resolves_by_name_from_any_folder(elsewhere, value):
    cfg = load_config(ClipConfig, value, section="clip")
    assert cfg == load_config(ClipConfig, CHECKOUT / "configs/clip/tiny_vit.yaml")
    # its data paths name the user's working folder; its DeepSpeed config is the bundled file
    assert cfg.data.train == "data/emoji/train-*.tar"
    assert Path(cfg.train.deepspeed) == recipes.bundled_root() / "deepspeed/zero0_bf16.json"


@pytest.mark.parametrize("cls, section", [(ClipConfig, "clip"), (AlignConfig, "align"),
                                          (FinetuneConfig, "finetune"), (PipelineConfig, "pipeline")])
def test_every_bundled_recipe_loads_by_name_from_any_folder(elsewhere, cls, section):
    names = recipes.recipe_names(section)
    assert names
    for name in names:
        load_config(cls, name, section=section)


def test_an_unknown_recipe_lists_the_section_and_the_closest_name(elsewhere):
    with pytest.raises(MmtoolError, match=r"config file not found: tiny_vitt .*tiny_resnet.*did you mean 'tiny_vit'"):
        load_config(ClipConfig, "tiny_vitt", section="clip")


def test_a_file_in_the_current_folder_wins_over_a_recipe_of_that_name(elsewhere):
    (elsewhere / "tiny_vit.yaml").write_text("train: {epochs: 3}\n")
    assert load_config(ClipConfig, "tiny_vit.yaml", section="clip").train.epochs == 3


def test_paths_in_a_user_yaml_are_taken_from_its_folder(elsewhere, tmp_path):
    project = tmp_path / "project"
    (project / "llm").mkdir(parents=True)
    (project / "llm" / "config.json").write_text("{}")
    (project / "ds.json").write_text("{}")
    yaml_file = project / "align.yaml"
    yaml_file.write_text("model: {vision: runs/clip/clip.pt, llm: llm}\n"
                         "data: {train: shards/train-*.tar, val: /abs/val-*.tar, feature_cache: auto}\n"
                         "train: {deepspeed: ds.json}\n")
    cfg = load_config(AlignConfig, yaml_file, section="align")
    assert cfg.model.vision == str(project / "runs/clip/clip.pt")  # need not exist yet
    assert cfg.model.llm == str(project / "llm")  # a folder there
    assert cfg.data.train == str(project / "shards/train-*.tar")
    assert cfg.data.val == "/abs/val-*.tar"
    assert cfg.data.feature_cache == "auto"  # a keyword, not a path
    assert cfg.train.deepspeed == str(project / "ds.json")


def test_names_and_overrides_in_a_user_yaml_stay_as_written(elsewhere, tmp_path):
    yaml_file = tmp_path / "align.yaml"
    yaml_file.write_text("model: {llm: llama}\ntrain: {deepspeed: zero3_bf16}\n")
    cfg = load_config(AlignConfig, yaml_file, ["data.train=mine/*.tar"], section="align")
    assert cfg.model.llm == "llama"  # an alias: no such file beside the YAML
    assert cfg.data.train == "mine/*.tar"  # --set values are the current folder's, like every flag
    assert Path(cfg.train.deepspeed) == recipes.bundled_root() / "deepspeed/zero3_bf16.json"


def test_a_user_pipeline_names_its_outputs_and_stage_configs_from_its_folder(elsewhere, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_clip.yaml").write_text("train: {epochs: 1}\n")
    yaml_file = project / "pipeline.yaml"
    yaml_file.write_text("out: runs/p\nemoji: {out: data/e}\nclip: {config: my_clip.yaml}\n"
                         "finetune: {config: emoji}\n")
    cfg = load_config(PipelineConfig, yaml_file, section="pipeline")
    assert (cfg.out, cfg.emoji.out) == (str(project / "runs/p"), str(project / "data/e"))
    assert cfg.clip.config == str(project / "my_clip.yaml")
    assert Path(cfg.finetune.config) == recipes.bundled_root() / "finetune/emoji.yaml"
    assert Path(cfg.align.config) == recipes.bundled_root() / "align/emoji.yaml"  # the default, found from here


def test_a_yaml_error_names_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 1\n  epochs: [2\n")
    with pytest.raises(MmtoolError, match=r"bad\.yaml:4:1: invalid YAML") as err:
        load_config(ClipConfig, bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override, suggestion", [("train.lrr=1", "'lr'"), ("modle.embed_dim=8", "'model'"),
                                                   ("data.batchsize=4", "'batch_size'")])
def test_a_typo_gets_did_you_mean(override, suggestion):
    with pytest.raises(MmtoolError, match=f"did you mean {suggestion}"):
        load_config(ClipConfig, "tiny_vit", [override], section="clip")


def test_the_printed_config_saved_in_the_current_folder_loads_back_to_the_same_config(elsewhere):
    cfg = load_config(ClipConfig, "default", ["train.lr=1e-4"], section="clip")
    printed = elsewhere / "printed.yaml"
    printed.write_text(to_yaml(cfg))
    again = load_config(ClipConfig, printed)
    # the same files: the recipe's paths were the current folder's, the saved YAML's are its own folder's
    assert (again.data.train, again.data.val) == (str(elsewhere / cfg.data.train), str(elsewhere / cfg.data.val))
    again.data.train, again.data.val = cfg.data.train, cfg.data.val
    assert again == cfg
