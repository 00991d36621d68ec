"""CelebA-HQ read from the CelebAMask-HQ layout, with identities from ndb796's identity file.

Layout (the files may also sit in `<root>/CelebAMask-HQ/`)::

    CelebA-HQ-img/0.jpg ... 29999.jpg
    CelebAMask-HQ-attribute-anno.txt  line 1: image count; line 2: 40 attribute names;
                                      then `0.jpg  1 -1 ...`
    CelebA-HQ-identity.txt            `0.jpg 2880` (no header): HQ image -> CelebA identity

The identity file's format follows the scripts that read it (ndb796's
identity_dataset_generator.py and 1-SHUI's CelebAHQ class): one `<name> <identity>` pair per line.
Images it does not list are left out, since 1-SHUI splits by identity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.data.base import FaceData
from models.data.celeba import (
    attribute_task,
    parse_identity,
    read_attribute_table,
    read_image_column,
)
from models.data.images import (
    check_images_exist,
    file_image_loader,
    paths_in,
    require_dir,
    require_file,
    resolve_folder,
)

IMAGE_DIR = "CelebA-HQ-img"
ATTRIBUTE_FILE = "CelebAMask-HQ-attribute-anno.txt"
IDENTITY_FILE = "CelebA-HQ-identity.txt"


def load_celebahq(root: Path | str) -> FaceData:
    """CelebA-HQ from `root` (or `root/CelebAMask-HQ`): images that have an identity only."""
    folder = resolve_folder(root, "CelebAMask-HQ", ATTRIBUTE_FILE)
    table = read_attribute_table(require_file(folder / ATTRIBUTE_FILE))
    identity_path = require_file(folder / IDENTITY_FILE)
    identities = read_image_column(identity_path, table.row_of(), parse_identity, ATTRIBUTE_FILE)
    keep = sorted(identities)
    names = [table.names[row] for row in keep]
    image_dir = require_dir(folder / IMAGE_DIR)
    check_images_exist(image_dir, names, table.path, [table.lines[row] for row in keep])
    return FaceData(
        name="celebahq",
        keys=names,
        identities=[identities[row] for row in keep],
        tasks={"attributes": attribute_task(table)},
        # 1-SHUI counts any value other than -1 as positive.
        targets={"attributes": (table.values[keep] != -1).astype(np.float32)},
        load_image=file_image_loader(paths_in(image_dir, names)),
        meta={
            "root": str(folder),
            "listed_images": len(table.names),
            "dropped_without_identity": len(table.names) - len(keep),
        },
    )
