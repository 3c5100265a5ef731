"""``fetch``: get a dataset from Kaggle (through the official client) or from a local zip."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from cropdoc.core.errors import UserError

KAGGLE_PREFIX = "kaggle:"


def fetch(source: str, dest: str | os.PathLike) -> dict:
    """Download ``kaggle:<competition>`` or unpack a local Kaggle zip into ``dest``.

    ``dest`` must be new or empty; it is filled only once the whole archive is unpacked.
    """
    dest = Path(dest).expanduser()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"{dest} already exists and is not empty: choose a new --dest")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cropdoc-fetch-", dir=dest.parent) as tmp:
        if source.startswith(KAGGLE_PREFIX):
            archive = _download_kaggle(source[len(KAGGLE_PREFIX) :], Path(tmp))
        else:
            archive = Path(source).expanduser()
            if not archive.is_file():
                raise UserError(
                    f"{source} is neither kaggle:<competition> nor a zip file that exists"
                )
        unpacked = Path(tmp) / "unpacked"
        count = unzip(archive, unpacked)
        if dest.exists():
            dest.rmdir()
        os.replace(unpacked, dest)
    return {"dest": str(dest), "files": count, "source": source}


def unzip(archive: Path, dest: Path) -> int:
    """Unpack ``archive`` into ``dest``, refusing members that would land outside it."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            root = dest.resolve()
            for member in members:
                target = (dest / member.filename).resolve()
                if root not in target.parents:
                    raise UserError(
                        f"{archive} holds an unsafe path {member.filename!r}: not unpacked"
                    )
            for member in members:
                target = dest / member.filename
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            return len(members)
    except zipfile.BadZipFile:
        raise UserError(f"{archive} is not a valid zip file: download it again") from None


def _download_kaggle(competition: str, folder: Path) -> Path:
    if not competition:
        raise UserError("name the competition: kaggle:paddy-disease-classification")
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError:
        raise UserError(
            "the kaggle client is not installed: pip install 'cropdoc[kaggle]', "
            "or download the zip yourself and run cropdoc fetch FILE.zip --dest DIR"
        ) from None
    except Exception as exc:  # old clients authenticate on import
        raise _kaggle_failed(competition, exc) from None
    try:
        api = KaggleApi()
        api.authenticate()
        api.competition_download_files(competition, path=str(folder), quiet=False)
    except Exception as exc:  # credentials, network and HTTP errors alike
        raise _kaggle_failed(competition, exc) from None
    zips = sorted(folder.glob("*.zip"))
    if not zips:
        raise UserError(f"the kaggle client downloaded no zip for {competition}")
    return zips[0]


def _kaggle_failed(competition: str, exc: Exception) -> UserError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(
        f"could not download {competition} from Kaggle ({reason[:160]}): put your API token in "
        "~/.kaggle/kaggle.json (or set KAGGLE_USERNAME and KAGGLE_KEY), accept the competition's "
        "rules on its page, check the network, or download the zip yourself and run "
        "cropdoc fetch FILE.zip --dest DIR"
    )
