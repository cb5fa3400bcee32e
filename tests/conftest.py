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
def paris250_lite0_rmac_cache(tmp_path_factory):
    """(Dataset, cache Entry): EfficientNet-Lite0 R-MAC at 1024 px on Paris6k-250, extracted once per session.

    About 1-2 minutes on 2 CPU cores; shared by every test that needs real descriptors.
    """
    if not (PARIS250 / "paris_120310").is_dir():
        pytest.skip(f"real Paris6k subset not found at {PARIS250} (only in the project's workplace)")
    from cbir.data import load_dataset
    from cbir.extraction import ensure_descriptors
    from cbir.method import Method

    dataset = load_dataset("paris6k", PARIS250)
    method = Method(backbone="tf_efficientnet_lite0", pooling="rmac", size=1024)
    return dataset, ensure_descriptors(dataset, method, tmp_path_factory.mktemp("paris250-cache"))
