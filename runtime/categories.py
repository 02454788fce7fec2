"""Categories (torch-free): :class:`Category`, the contiguous-label table :class:`CategoryTable`,
and the 133 COCO panoptic categories (80 things, then 53 stuff) in the order of
``panoptic_{train,val}2017.json`` as (COCO id, name), for published checkpoints, which carry
class names but no category ids."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Category:
    id: int  # the COCO category id (as in the JSON)
    name: str
    isthing: bool


class CategoryTable:
    """Contiguous labels <-> COCO category ids.

    REFERENCE §8: contiguous labels put things first (0..T-1) then stuff (T..T+S-1), each group in the
    JSON's order. The model's VOID label is T+S (133 for COCO).
    """

    def __init__(self, categories: Sequence[Category | dict]):
        cats = [c if isinstance(c, Category) else Category(int(c["id"]), str(c["name"]), bool(c["isthing"]))
                for c in categories]
        if len({c.id for c in cats}) != len(cats):
            raise ValueError("category ids must be unique")
        self.things = [c for c in cats if c.isthing]
        self.stuff = [c for c in cats if not c.isthing]
        self.by_label: list[Category] = self.things + self.stuff
        self.label_of_id = {c.id: i for i, c in enumerate(self.by_label)}

    @property
    def num_things(self) -> int:
        return len(self.things)

    @property
    def num_stuff(self) -> int:
        return len(self.stuff)

    @property
    def void_label(self) -> int:
        return len(self.by_label)

    def __len__(self) -> int:
        return len(self.by_label)

    def to_json(self) -> list[dict]:
        """The categories in contiguous-label order, as COCO-style dicts."""
        return [{"id": c.id, "name": c.name, "isthing": int(c.isthing)} for c in self.by_label]

COCO_THINGS: list[tuple[int, str]] = [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
]

COCO_STUFF: list[tuple[int, str]] = [
    (92, "banner"), (93, "blanket"), (95, "bridge"), (100, "cardboard"), (107, "counter"), (109, "curtain"),
    (112, "door-stuff"), (118, "floor-wood"), (119, "flower"), (122, "fruit"), (125, "gravel"), (128, "house"),
    (130, "light"), (133, "mirror-stuff"), (138, "net"), (141, "pillow"), (144, "platform"),
    (145, "playingfield"), (147, "railroad"), (148, "river"), (149, "road"), (151, "roof"), (154, "sand"),
    (155, "sea"), (156, "shelf"), (159, "snow"), (161, "stairs"), (166, "tent"), (168, "towel"),
    (171, "wall-brick"), (175, "wall-stone"), (176, "wall-tile"), (177, "wall-wood"), (178, "water-other"),
    (180, "window-blind"), (181, "window-other"), (184, "tree-merged"), (185, "fence-merged"),
    (186, "ceiling-merged"), (187, "sky-other-merged"), (188, "cabinet-merged"), (189, "table-merged"),
    (190, "floor-other-merged"), (191, "pavement-merged"), (192, "mountain-merged"), (193, "grass-merged"),
    (194, "dirt-merged"), (195, "paper-merged"), (196, "food-other-merged"), (197, "building-other-merged"),
    (198, "rock-merged"), (199, "wall-other-merged"), (200, "rug-merged"),
]


def coco_panoptic_categories() -> list[Category]:
    return [Category(i, n, True) for i, n in COCO_THINGS] + [Category(i, n, False) for i, n in COCO_STUFF]
