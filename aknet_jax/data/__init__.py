"""Video data: TFDS builders (Something-Something V1/V2, Diving48, synthetic_something) and the
tf.data input pipeline that feeds training and evaluation.

Kept import-light (no TensorFlow here): the build's worker processes import only `video_io`.
Import `aknet_jax.data.builders` to register every builder with TFDS.
"""
