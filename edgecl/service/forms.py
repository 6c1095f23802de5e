"""Reading the multipart bodies of ``POST /v1/samples`` and ``POST /v1/predict``: every way a
body can be wrong becomes an :class:`InputError` (400) or an :class:`HTTPException` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request

from edgecl.errors import InputError

MAX_TEXT_PART = 64 * 1024  # a text field (label, key) larger than this is refused unread
NPY_MAGIC = b"\x93NUMPY"
HOW = "send multipart/form-data with one or more PNG or JPEG 'image' file parts"


@dataclass
class Upload:
    images: list[bytes]
    labels: list[object]
    keys: list[str | None] | None


async def read_form(request: Request, fields: tuple[str, ...]) -> FormData:
    """The multipart form of ``request``, with only ``fields`` in it."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/form-data":
        body = await request.body()
        if not body:
            raise InputError(f"empty request body: {HOW}")
        if media == "application/json" or body.lstrip()[:1] in (b"[", b"{"):
            raise HTTPException(415, "JSON bodies are not accepted (no arrays, NaN or "
                                f"otherwise): {HOW}")
        raise HTTPException(415, f"Content-Type {media or '(none)'} is not supported: {HOW}")
    if request.headers.get("content-length") == "0":
        raise InputError(f"empty request body: {HOW}")
    form = await request.form(max_part_size=MAX_TEXT_PART)
    unknown = sorted({name for name in form if name not in fields})
    if unknown:
        raise InputError(f"unknown form field {unknown[0]!r}; the fields are "
                         f"{', '.join(fields)}")
    return form


async def images_of(form: FormData) -> list[bytes]:
    images = []
    for i, part in enumerate(form.getlist("image")):
        if isinstance(part, str):
            raise InputError(f"image {i}: is a text field; send each image as a file part "
                             "(with a filename)")
        data = await part.read()
        if data.startswith(NPY_MAGIC):
            raise InputError(f"image {i}: is a NumPy array (.npy); raw arrays are not "
                             "accepted, send PNG or JPEG")
        images.append(data)
    if not images:
        raise InputError(f"no image: {HOW}")
    return images


def text_of(value: object, what: str, index: int) -> object:
    """A text field's value; a file part stays an object so the learner names its type."""
    if not isinstance(value, str):
        raise InputError(f"{what} {index}: must be text, got a file part")
    # starlette falls back to latin-1 for bytes that are not UTF-8: C1 controls betray it
    if any("\x80" <= c <= "\x9f" for c in value):
        raise InputError(f"{what} {index}: is not UTF-8 text")
    return value


async def read_upload(request: Request) -> Upload:
    form = await read_form(request, ("image", "label", "key"))
    images = await images_of(form)
    labels = [text_of(v, "label", i) for i, v in enumerate(form.getlist("label"))]
    raw_keys = [text_of(v, "key", i) for i, v in enumerate(form.getlist("key"))]
    keys = [str(k) or None for k in raw_keys] if raw_keys else None
    if keys is not None and len(keys) != len(images):
        raise InputError(f"{len(images)} images but {len(keys)} keys: send no 'key' or one "
                         "per image (an empty key: none for that image)")
    return Upload(images, labels, keys)
