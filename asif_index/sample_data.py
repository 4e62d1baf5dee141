"""A small image-caption data set the project can ship: scikit-image's bundled photographs
(public domain or freely licensed, see skimage/data/README.txt) with captions written here.

Each photograph gives several anchor pairs (the image, its mirror and crops, each with a
differently worded caption) so that a demo has enough anchors for k > 1.
"""

from __future__ import annotations

from pathlib import Path

# file in skimage/data, class label, captions (one per view)
SAMPLES: list[tuple[str, str, tuple[str, ...]]] = [
    ("astronaut.png", "person", (
        "an astronaut in a white space suit posing with a flag",
        "portrait of a smiling woman astronaut",
        "a person in a spacesuit in front of the american flag",
    )),
    ("chelsea.png", "cat", (
        "a tabby cat looking to the side",
        "close up of an orange and brown cat",
        "a cat with whiskers resting indoors",
    )),
    ("coffee.png", "cup", (
        "a cup of coffee on a saucer with a spoon",
        "a red coffee cup seen from above",
        "espresso in a cup on a table",
    )),
    ("rocket.jpg", "rocket", (
        "a rocket on the launch pad before lift off",
        "a space rocket standing on its launch tower",
        "a tall rocket ready for launch under a blue sky",
    )),
    ("motorcycle_left.png", "motorcycle", (
        "a motorcycle parked in a garage",
        "side view of a motorbike indoors",
        "a black motorcycle standing on the floor",
    )),
    ("hubble_deep_field.jpg", "galaxy", (
        "many distant galaxies in deep space",
        "a telescope image of stars and galaxies",
        "the night sky full of galaxies",
    )),
    ("camera.png", "person", (
        "a black and white photo of a man with a camera on a tripod",
        "a photographer standing in a field",
        "a man taking a picture outdoors",
    )),
    ("coins.png", "coins", (
        "old coins lying on a dark surface",
        "a collection of round metal coins",
        "many coins arranged in rows",
    )),
    ("moon.png", "moon", (
        "the surface of the moon with craters",
        "a grey lunar landscape",
        "close up of moon craters",
    )),
    ("grass.png", "grass", (
        "a patch of green grass",
        "close up of blades of grass",
        "a lawn seen from above",
    )),
    ("gravel.png", "gravel", (
        "a ground covered with small stones",
        "gravel and pebbles on a path",
        "texture of grey gravel",
    )),
    ("brick.png", "wall", (
        "a brick wall",
        "texture of red bricks and mortar",
        "an old wall made of bricks",
    )),
    ("retina.jpg", "eye", (
        "a medical image of the retina of an eye",
        "the back of a human eye with blood vessels",
        "an eye fundus photograph",
    )),
    ("page.png", "text", (
        "a scanned page of printed text",
        "a page from a book with words",
        "black letters on a white page",
    )),
]


def sample_dir() -> Path:
    from asif_index._optional import require

    skimage = require("skimage", "the bundled sample data set")
    return Path(skimage.__file__).parent / "data"


def sample_pairs():
    """(uint8 RGB arrays, captions, labels): one pair per view of each sample photograph."""
    import numpy as np

    from asif_index.encoders.image import load_image

    root = sample_dir()
    images, captions, labels = [], [], []
    for fname, label, caps in SAMPLES:
        img = np.asarray(load_image(root / fname))
        h, w = img.shape[:2]
        views = [img, img[:, ::-1], img[h // 8 : h - h // 8, w // 8 : w - w // 8]]
        for view, cap in zip(views, caps):
            images.append(np.ascontiguousarray(view))
            captions.append(cap)
            labels.append(label)
    return images, captions, labels
