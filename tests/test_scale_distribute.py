"""tf.distribute: a relevance model built under MirroredStrategy runs on every replica.

Two logical CPU devices stand in for two GPUs; they must be configured before TensorFlow starts,
so the check runs in a fresh process. XLA compilation of the reverse pass (what TPUs need) is
covered by tests/test_persistence.py::test_xla_compiled_relevance_matches, and through
explain_dataset by tests/test_scale_dataset.py::test_xla_compiled_model_streams.
"""

import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import tf_dtd
    from tf_dtd.app import digits
    from tf_dtd.scale.explainer import Explainer

    out = sys.argv[1]
    model = digits.load_model()
    images, _ = digits.load_samples()
    x = np.concatenate([images, images[:3] * 0.5])          # 23 samples: a partial last batch
    single = tf_dtd.relevance_model(model, input_range=(0.0, 1.0), return_prediction=True)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = tf_dtd.relevance_model(model, input_range=(0.0, 1.0), return_prediction=True)
    kinds = sorted({type(v.value).__name__ for v in mirrored.weights})

    # Record, while the step is traced, which replica runs on which device with which batch.
    explainer = Explainer.of(mirrored)
    forward = explainer.model
    traced = []
    def recording(inputs, training=False):
        context = tf.distribute.get_replica_context()
        outputs = forward(inputs, training=training)
        traced.append((int(tf.get_static_value(context.replica_id_in_sync_group)),
                       outputs["relevance"].device, int(inputs.shape[0])))
        return outputs
    explainer.model = recording
    tf_dtd.explain_dataset(mirrored, x, out + "/mirrored", batch_size=8, shard_size=16, verbose=0)
    explainer.model = forward

    def relevance(folder):
        return np.concatenate([s["relevance"] for s in tf_dtd.load_results(folder)])
    np.savez(out + "/arrays.npz", single=single.predict(x, batch_size=8, verbose=0)[0],
             mirrored_predict=mirrored.predict(x, batch_size=8, verbose=0)[0],
             mirrored_dataset=relevance(out + "/mirrored"),
             replicas=strategy.num_replicas_in_sync, kinds=np.array(kinds),
             traced=np.array([f"{r} {d} {b}" for r, d, b in traced]))
""")


def test_mirrored_strategy_equals_one_device(tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    arrays = np.load(tmp_path / "arrays.npz")

    assert int(arrays["replicas"]) == 2
    assert list(arrays["kinds"]) == ["MirroredVariable"]  # every weight lives on both devices
    # One trace per replica, each on its own device with half of the batch of 8.
    assert sorted(arrays["traced"]) == ["0 /job:localhost/replica:0/task:0/device:CPU:0 4",
                                        "1 /job:localhost/replica:0/task:0/device:CPU:1 4"]
    single = arrays["single"]
    assert np.abs(single).max() > 0
    for name in ("mirrored_predict", "mirrored_dataset"):
        np.testing.assert_allclose(arrays[name], single, rtol=1e-5,
                                   atol=1e-6 * np.abs(single).max(), err_msg=name)
