from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PARIS250 = SHARED / "data" / "paris6k-250"


@pytest.fixture
def paris250() -> Path:
    """The real 250-image Paris6k subset; present beside the developers' checkout only."""
    if not (PARIS250 / "paris_120310").is_dir():
        pytest.skip(f"real Paris6k subset not found at {PARIS250} (only in the project's workplace)")
    return PARIS250


@pytest.fixture(scope="session")
def paris250_lite0_cache(tmp_path_factory):
    """(Dataset, cache folder): EfficientNet-Lite0 MAC, SPoC, GeM and R-MAC at 1024 px on
    Paris6k-250, extracted in one pass once per session (about 40 s on 2 quiet cores)."""
    if not (PARIS250 / "paris_120310").is_dir():
        pytest.skip(f"real Paris6k subset not found at {PARIS250} (only in the project's workplace)")
    from cbir.data import load_dataset
    from cbir.extraction import extract
    from cbir.method import POOLINGS, Method

    dataset = load_dataset("paris6k", PARIS250)
    cache = tmp_path_factory.mktemp("paris250-cache")
    extract(dataset, [Method(backbone="tf_efficientnet_lite0", pooling=p, size=1024) for p in POOLINGS], cache)
    return dataset, cache


@pytest.fixture(scope="session")
def paris250_lite0_rmac_cache(paris250_lite0_cache):
    """(Dataset, cache Entry) of the R-MAC descriptors of `paris250_lite0_cache`."""
    from cbir.cache import load_entry
    from cbir.method import Method

    dataset, cache = paris250_lite0_cache
    return dataset, load_entry(cache, dataset, Method(backbone="tf_efficientnet_lite0", pooling="rmac", size=1024))
