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
