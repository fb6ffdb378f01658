"""Build-time frame I/O: PyAV video decoding, short-side resize, JPEG/PNG encoding.

Builders store every clip as a sequence of encoded frames so that the input pipeline decodes only
the frames it samples. All of this runs once, at build time, with PyAV and Pillow.
"""

from __future__ import annotations

import io
import os
from typing import Iterator

import av
import numpy as np
from PIL import Image


class VideoError(Exception):
  """A clip that cannot be turned into frames (undecodable, empty, missing); the build skips it."""


def resized_short_side(image: Image.Image, short_side: int) -> Image.Image:
  """Scales `image` so its short side is `short_side` (0 keeps it), the long side truncated.

  Same arithmetic as torchvision's Resize(int) and TSM's frame extraction (ffmpeg scale=-1:256).
  """
  w, h = image.size
  if short_side <= 0 or min(w, h) == short_side:
    return image
  size = (short_side, int(short_side * h / w)) if w <= h else (int(short_side * w / h), short_side)
  return image.resize(size, Image.BILINEAR)


def encode_jpeg(image: Image.Image | np.ndarray, quality: int = 90, subsampling: int = -1) -> bytes:
  """JPEG bytes of an RGB image (`subsampling` 0 = 4:4:4, -1 = Pillow's default 4:2:0)."""
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image)
  if image.mode != "RGB":
    image = image.convert("RGB")
  buf = io.BytesIO()
  image.save(buf, format="JPEG", quality=quality, subsampling=subsampling)
  return buf.getvalue()


def encode_png(array: np.ndarray) -> bytes:
  """PNG bytes of a (H, W) or (H, W, 1) uint8 array."""
  buf = io.BytesIO()
  image = Image.fromarray(np.asarray(array, np.uint8).reshape(array.shape[:2]), mode="L")
  image.save(buf, format="PNG")
  return buf.getvalue()


def decode_video(path: str | os.PathLike) -> Iterator[Image.Image]:
  """Yields the RGB frames of the first video stream of `path`, in order."""
  with av.open(os.fspath(path)) as container:
    if not container.streams.video:
      raise VideoError("no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    for frame in container.decode(stream):
      yield frame.to_image()


def video_to_jpegs(path: str | os.PathLike, short_side: int = 256,
                   quality: int = 90) -> list[bytes]:
  """Decodes a video file with PyAV into JPEG-encoded frames of the given short side.

  Raises VideoError when the file is missing, undecodable or has no frame.
  """
  if not os.path.isfile(path):
    raise VideoError(f"missing video file {os.fspath(path)}")
  if os.path.getsize(path) == 0:
    raise VideoError(f"empty video file {os.fspath(path)} (0 bytes)")
  try:
    jpegs, size = [], None
    for im in decode_video(path):
      im = resized_short_side(im, short_side)
      if size is None:
        size = im.size
      elif im.size != size:  # A mid-stream resolution change: keep the clip's frames one size.
        im = im.resize(size, Image.BILINEAR)
      jpegs.append(encode_jpeg(im, quality))
  except (av.FFmpegError, OSError, ValueError, EOFError) as e:
    raise VideoError(f"undecodable video {os.fspath(path)}: {type(e).__name__}: {e}") from None
  if not jpegs:
    raise VideoError(f"empty video {os.fspath(path)}: no frame decoded")
  return jpegs


def folder_to_jpegs(folder: str | os.PathLike, short_side: int = 0,
                    quality: int = 90) -> list[bytes]:
  """Reads a folder of JPEG frames (sorted by name) and checks each decodes.

  `short_side` 0 keeps the distributed bytes untouched (RGB JPEGs); otherwise frames whose short
  side differs are re-encoded at `short_side`. Raises VideoError for a missing, empty or corrupt
  folder.
  """
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise VideoError(f"missing frame folder {folder}")
  names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".jpg", ".jpeg")))
  if not names:
    raise VideoError(f"empty frame folder {folder}: no .jpg file")
  out, size = [], None
  for name in names:
    path = os.path.join(folder, name)
    try:
      with open(path, "rb") as f:
        data = f.read()
      with Image.open(io.BytesIO(data)) as im:
        im.load()
        new = resized_short_side(im, short_side)
        size = size or new.size
        if new is im and im.size == size and im.format == "JPEG" and im.mode == "RGB":
          out.append(data)  # As distributed, not re-encoded.
        else:
          out.append(encode_jpeg(new.convert("RGB").resize(size, Image.BILINEAR), quality))
    except (OSError, ValueError, SyntaxError) as e:
      raise VideoError(f"undecodable frame {path}: {type(e).__name__}: {e}") from None
  return out


def load_clip(job: tuple[str, str, int, int]) -> tuple[str, list[bytes] | str]:
  """(kind 'video'|'folder', path, short_side, quality) -> ('ok', jpegs) or ('skip', reason).

  Module-level so that build worker processes can run it.
  """
  kind, path, short_side, quality = job
  try:
    if kind == "video":
      return "ok", video_to_jpegs(path, short_side, quality)
    return "ok", folder_to_jpegs(path, short_side, quality)
  except VideoError as e:
    return "skip", str(e)
