"""Issue 13 (reliability): data problems are found before training, named with their fix, and never silent."""

import os
import struct
import warnings
import zlib

import numpy as np
import pytest
import yaml
from PIL import Image, ImageFile

from seglab.data import folder as folder_mod
from seglab.data.check import check, format_check
from seglab.data.folder import FolderDataset, scan_folder
from seglab.data.io import load_image, open_image, read_image
from seglab.errors import ConfigError, DataError

RNG = np.random.default_rng(0)
INDEX = np.array([[0, 1, 2, 0], [2, 1, 0, 0], [0, 0, 1, 2], [1, 2, 0, 0]])  # an index mask, labels 0..2


def write(root, masks, classes=None, images=None):
    """images/NN.png (random RGB, or ``images[i]`` if given) and masks/NN.png (L, or I;16 for uint16 arrays)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, m in enumerate(masks):
        h, w = m.shape
        img = images[i] if images is not None else RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "images" / f"{i:02d}.png")
        Image.fromarray(m if m.dtype == np.uint16 else m.astype(np.uint8)).save(
            root / "masks" / f"{i:02d}.png"
        )
    if classes is not None:
        (root / "classes.yaml").write_text(yaml.safe_dump(classes) if isinstance(classes, dict) else classes)
    return root


# 1. a binary 0/255 mask inside an index data set


def test_binary_mask_in_an_index_data_set_is_a_problem(tmp_path):
    binary = np.zeros((4, 4), np.uint8)
    binary[:2, :2] = 255  # the object, 25 % of the mask: read as ignore_index it would vanish
    root = write(tmp_path / "d", [INDEX, INDEX, binary])
    scan = check(root)
    assert len(scan.problems) == 1, scan.problems
    assert "masks/02.png holds only 0 and 255 (25.0 % of it)" in scan.problems[0]
    assert "relabel its 255 to the object's class index" in scan.problems[0]
    assert "declare ignore_index: 255 in" in scan.problems[0]
    with pytest.raises(DataError, match="masks/02.png holds only 0 and 255"):
        FolderDataset(root, "all")
    # a data set that declares its ignore_index means it
    (root / "classes.yaml").write_text("names: [a, b, c]\nignore_index: 255\n")
    assert check(root).problems == []


def test_ordinary_ignored_regions_are_not_flagged(tmp_path):
    bordered = INDEX.copy()
    bordered[3, :] = 255  # every labelled mask ignores a quarter of its pixels (e.g. a void border)
    difficult = np.zeros((4, 4), np.uint8)
    difficult[0, :3] = 255  # one mask with only background and an ignored object: 19 % < 4 x 25 %
    scan = check(write(tmp_path / "d", [bordered, bordered, difficult]))
    assert scan.problems == [] and scan.classes.num_classes == 3
    assert scan.ignored_pixels == 4 + 4 + 3


def test_two_names_and_0_255_masks_read_as_binary(tmp_path):
    binary = np.array([[0, 255], [255, 0]])
    scan = check(write(tmp_path / "d", [binary], classes={"names": ["background", "nucleus"]}))
    assert scan.problems == [] and scan.classes.mask_format == "binary"
    assert scan.class_pixels.tolist() == [2, 2]


# 2. a stray value must not set the class count


def test_one_stray_16_bit_value_does_not_set_the_class_count(tmp_path):
    stray = INDEX.astype(np.uint16)
    stray[0, 0] = 1000
    root = write(tmp_path / "d", [INDEX, stray])
    assert Image.open(root / "masks" / "01.png").mode == "I;16"
    scan = check(root)
    assert len(scan.problems) == 1, scan.problems
    problem = scan.problems[0]
    assert "class count 1001 inferred from the largest mask value 1000" in problem
    assert "masks/01.png, 1 px" in problem and "the values 3..999 are in no mask" in problem
    assert "names: one per class; ignore_index: 1000 if" in problem
    text = format_check(scan)
    assert len(text.splitlines()) < 30 and "997 classes hold no pixels" in text, text
    # with classes.yaml the value is simply outside the declared classes
    (root / "classes.yaml").write_text("names: [a, b, c]\n")
    assert check(root).problems == [
        f"mask {root}/masks/01.png has value 1000 but the data set has 3 classes (0..2, ignore_index=255); fix "
        "the mask, add the missing classes to 'names:' in classes.yaml, or, if 1000 marks pixels to ignore, set "
        "ignore_index: 1000 in classes.yaml (or data.ignore_index)"
    ]


def test_class_count_with_a_gap_is_flagged_but_a_full_range_is_not(tmp_path):
    gap = np.array([[0, 1], [4, 0]])
    assert "the values 2..3 are in no mask" in check(write(tmp_path / "a", [gap])).problems[0]
    assert check(write(tmp_path / "b", [gap, np.array([[2, 3], [0, 0]])])).problems == []


# 3. one image reader, one mode policy


@pytest.mark.parametrize("mode", ["I;16", "F"])
def test_16_bit_and_float_images_are_read_in_their_own_type(tmp_path, mode):
    """Once refused ("convert it to 8 bits"): now read exactly, in their own type, and never to 8 bits; a band
    count other than the data set's (or the model's) is what is refused, in one line naming the file."""
    path = tmp_path / ("x.png" if mode == "I;16" else "x.tif")
    arr = (np.arange(12).reshape(3, 4) * 3333 + 7).astype(np.uint16 if mode == "I;16" else np.float32)
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode == mode
    for channels in (None, 1):
        out = read_image(path, channels)
        assert out.dtype == arr.dtype and out.shape == (3, 4, 1) and (out[..., 0] == arr).all()
    with pytest.raises(DataError, match=f"image {path} has 1 band\\(s\\) of {arr.dtype}, but 3 are expected"):
        read_image(path, 3)  # predict passes the checkpoint's channel count
    root = write(tmp_path / "d", [INDEX] * 3)  # RGB images ...
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(
        root / "images" / "00.png"
    )  # ... and a 16-bit gray one
    scan = check(root)
    assert scan.dtype == "uint16" and len(scan.problems) == 1
    assert scan.problems[0].startswith(
        f"image {root / 'images' / '00.png'} has 1 band(s) of uint16 but the data "
    )
    assert f"have 3 (e.g. {root / 'images' / '01.png'})" in scan.problems[0]


# 4. ignore_index must not be a class


@pytest.mark.parametrize(
    "value, why",
    [("1", "is class 1 \\('b'\\)"), ("2.5", "is 2.5"), ("true", "is True"), ("none", "is 'none'")],
)
def test_declared_ignore_index_must_be_an_integer_outside_the_classes(tmp_path, value, why):
    root = write(tmp_path / "d", [INDEX], classes=f"names: [a, b, c]\nignore_index: {value}\n")
    with pytest.raises(DataError, match=f"classes.yaml: 'ignore_index' {why} but must be an integer") as e:
        scan_folder(root)
    assert "outside the classes 0..2, e.g. ignore_index: 255" in str(e.value) and "\n" not in str(e.value)


def test_ignore_index_argument_inside_the_class_range_is_a_problem(tmp_path):
    root = write(tmp_path / "d", [INDEX])
    scan = scan_folder(root, ignore_index=1)
    assert scan.problems == [
        "ignore_index 1 is class 1 of the masks' classes (0..2), so that class would vanish from training and "
        "metrics; set ignore_index (data.ignore_index, --ignore-index, or ignore_index: in classes.yaml) to a "
        "value no class uses, e.g. 255"
    ]
    assert scan_folder(root, ignore_index=2).problems == []  # 2 marks pixels to ignore: classes 0 and 1


# 5. a data set needs two classes


def test_all_zero_masks_are_one_class_and_refused(tmp_path):
    root = write(tmp_path / "d", [np.zeros((4, 4))] * 3)
    scan = check(root)
    assert (
        len(scan.problems) == 1
        and "holds only the value 0, so the data set has one class" in scan.problems[0]
    )
    assert "binary masks must use 255 for the foreground" in scan.problems[0]
    with pytest.raises(DataError, match="one class"):
        FolderDataset(root, "all")
    assert FolderDataset(root, "all", num_classes=2).num_classes == 2  # a checkpoint knows the classes


def test_classes_yaml_with_one_name_is_refused(tmp_path):
    root = write(tmp_path / "d", [np.zeros((4, 4))], classes={"names": ["cell"]})
    assert check(root).problems == [
        f"{root}/classes.yaml names one class ('cell'); a segmentation data set needs at least two "
        "(e.g. names: [background, cell])"
    ]


def test_declared_classes_but_only_class_0_in_the_masks(tmp_path):
    root = write(tmp_path / "d", [np.array([[0, 255], [0, 0]])], classes={"names": ["a", "b", "c"]})
    assert (
        "no mask in" in check(root).problems[0]
        and "holds a class other than 0 ('a')" in check(root).problems[0]
    )


# 6. EXIF orientation


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied_to_pixels_and_header_sizes(tmp_path, fmt):
    pixels = np.kron(np.arange(6, dtype=np.uint8).reshape(2, 3) * 40, np.ones((8, 8), np.uint8))  # 24 x 16
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    root = write(tmp_path / "d", [np.ones((24, 16)) * (np.arange(16) % 2)])  # a mask 16 wide, 24 high
    path = root / "images" / ("00.png" if fmt == "PNG" else "00.jpg")
    (root / "images" / "00.png").unlink()
    Image.fromarray(pixels).save(path, format=fmt, exif=exif, **({"quality": 100} if fmt == "JPEG" else {}))
    assert Image.open(path).size == (24, 16)
    image = read_image(path, 1)[..., 0]
    assert image.shape == (24, 16)
    assert np.abs(image.astype(int) - np.rot90(pixels, -1)).max() <= (0 if fmt == "PNG" else 8)
    for deep in (False, True):  # the header scan agrees with the decoded size
        scan = scan_folder(root, deep=deep)
        assert scan.problems == [] and dict(scan.sizes) == {(16, 24): 1}
    assert FolderDataset(root, "all")[0][0].shape == (24, 16, 1)


# 7. classes.yaml values of the wrong type


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "names: [a, b]\ncolors: 5",
            "'colors' needs one \\[r, g, b\\] of integers 0..255 per name \\(2\\), got 5",
        ),
        ("names: [a, b]\ncolors: [[1, 2, x], [0, 0, 0]]", "'colors' needs .* got \\[1, 2, 'x'\\]"),
        ("names: [a, b]\ncolors: [[0, 0, 0]]", "'colors' needs .* got 1 entries"),
        ("names: [a, b]\ncolors: [[0, 0, 0], [0, 0, 0]]", "'colors' gives \\[0, 0, 0\\] to two classes"),
        ("names: [a, b]\nignore_color: 7", "'ignore_color' 7 must be one \\[r, g, b\\]"),
        (
            "names: [a, b]\ncolors: [[0, 0, 0], [9, 9, 9]]\nignore_color: [9, 9, 9]",
            "'ignore_color' .* is the colour",
        ),
        ("names: [a, 1]", "'names' must be strings, but entry 1 is 1; quote it"),
        ("names: [a, null]", "'names' must be strings, but entry 1 is None"),
        ("names: [a, a]", "'names' lists 'a' twice"),
        ("names: background", "'names' must be a non-empty list"),
        ("names: [a, b]\nmask_format: 3", "'mask_format' is 3 but must be one of auto, index, binary, rgb"),
        ("- a\n- b", "must hold a mapping with a non-empty list 'names'"),
        ("names: [a, b]\nnum_classes: 2", "unknown keys \\['num_classes'\\]"),
        ("names: [a, b\n", "cannot read"),
    ],
)
def test_classes_yaml_of_the_wrong_type_gives_one_line(tmp_path, text, message):
    root = write(tmp_path / "d", [INDEX], classes=text)
    with pytest.raises(DataError, match=message) as e:
        check(root)
    assert "classes.yaml" in str(e.value) and "\n" not in str(e.value)


# 8. one pixel limit, checked from the header


def header_only_png(path, w, h):
    """A PNG that claims w x h RGB pixels but holds no pixel data (a few dozen bytes)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("limit", [100_000_000, 1_000_000])  # Pillow would warn / refuse for these
def test_pixel_limit_is_checked_from_the_header_without_warnings(tmp_path, monkeypatch, limit):
    monkeypatch.setenv("SEGLAB_MAX_PIXELS", str(limit))
    big = header_only_png(tmp_path / "big.png", 12000, 12000)
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not leak
        with pytest.raises(DataError) as e:
            read_image(big, 3)
    size = "12000x12000 = 144,000,000 pixels" if limit > 72_000_000 else "over 2,000,000 pixels"
    assert str(e.value) == (
        f"{big} is {size}, above the limit of {limit:,} pixels; shrink or tile it, or raise the limit with the "
        "environment variable SEGLAB_MAX_PIXELS"
    )
    assert decoded == []  # refused before decoding


def test_pixel_limit_applies_to_data_sets_and_is_configurable(tmp_path, monkeypatch):
    root = write(tmp_path / "d", [INDEX, INDEX])
    assert check(root).problems == []  # decoded and cached under the default limit
    monkeypatch.setenv("SEGLAB_MAX_PIXELS", "15")
    problems = check(root).problems  # the cached sizes are checked against the new limit
    assert len(problems) == 4 and all("4x4 = 16 pixels, above the limit of 15 pixels" in p for p in problems)
    monkeypatch.setenv("SEGLAB_MAX_PIXELS", "lots")
    with pytest.raises(ConfigError, match="SEGLAB_MAX_PIXELS='lots' must be a whole number"):
        open_image(root / "images" / "00.png")


# 9. every file validated once, before training, and cached


def count_decodes(monkeypatch):
    decoded = []
    load = ImageFile.ImageFile.load

    def counting(self):
        if self.tile:  # pixels still to decode
            decoded.append(os.path.relpath(self.filename, os.path.dirname(os.path.dirname(self.filename))))
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    return decoded


def test_second_deep_scan_decodes_nothing_and_a_touched_file_is_read_again(tmp_path, monkeypatch):
    root = write(tmp_path / "d", [INDEX] * 3)
    decoded = count_decodes(monkeypatch)
    first = check(root)
    # the scan decodes every file; the band statistics (no splits/: of every image) read the images once more
    images = [f"images/{i:02d}.png" for i in range(3)]
    assert sorted(decoded) == sorted([*images, *images, *(f"masks/{i:02d}.png" for i in range(3))])
    decoded.clear()
    second = check(root)
    assert decoded == []
    assert second.problems == first.problems == []
    assert second.class_pixels.tolist() == first.class_pixels.tolist() == [24, 12, 12]
    assert dict(second.sizes) == dict(first.sizes) == {(4, 4): 3} and second.in_channels == 3
    st = os.stat(root / "masks" / "01.png")
    os.utime(root / "masks" / "01.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    check(root)
    assert decoded == ["masks/01.png"]
    decoded.clear()
    assert scan_folder(root).problems == [] and decoded == []  # the plain (training) scan uses the cache too


def test_a_changed_file_is_not_served_from_the_cache(tmp_path):
    mask = np.kron(INDEX, np.ones((8, 8), int))  # 32 x 32
    root = write(tmp_path / "d", [mask] * 2, classes={"names": ["a", "b", "c"], "mask_format": "index"})
    assert check(root).problems == []
    bad = mask.copy()
    bad[0, 0] = 7
    Image.fromarray(bad.astype(np.uint8)).save(root / "masks" / "01.png")
    data = (root / "images" / "00.png").read_bytes()
    (root / "images" / "00.png").write_bytes(data[: len(data) // 2])  # truncated: the header is intact
    assert scan_folder(root).problems == []  # declared mask_format: the plain scan reads headers only ...
    problems = check(root).problems  # ... the deep scan that training runs first finds both
    assert len(problems) == 2, problems
    assert "cannot decode" in problems[0] and "images/00.png" in problems[0]
    assert "masks/01.png has value 7" in problems[1]


def test_corrupt_or_unwritable_cache_is_ignored(tmp_path, monkeypatch):
    root = write(tmp_path / "d", [INDEX] * 2)
    cache_dir = folder_mod.scan_cache_dir()
    assert check(root).problems == []
    (cache_file,) = cache_dir.glob("*.json")
    assert str(root.resolve()) in cache_file.read_text()
    cache_file.write_text('{"version": 1, "root": "' + str(root.resolve()) + '", "files": {"x": [')
    decoded = count_decodes(monkeypatch)
    assert check(root).class_pixels.tolist() == [16, 8, 8] and len(decoded) == 4
    decoded.clear()
    assert check(root).problems == [] and decoded == []  # rewritten
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("SEGLAB_CACHE_DIR", str(blocker))
    assert check(root).problems == [] and len(decoded) == 6  # 4 files, and the 2 images for the statistics


def test_load_image_is_the_one_loading_function(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((3, 5), np.uint8)).save(path)
    assert load_image(path).size == (5, 3)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match=f"{path}"):
        load_image(path)
