"""The exported SavedModel as TensorFlow Serving sees it (docs/scaling.md, "Serving").

TensorFlow Serving loads the ``serving_default`` signature; this checks, in a fresh process that
never imports tf_dtd, the signature's input and output names, dtypes and shapes stated in the
docs, and answers a REST ``predict`` request body the way TF Serving's row format does.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np

import tf_dtd
from tf_dtd.app import digits

SERVER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    folder = sys.argv[1]
    loaded = tf.saved_model.load(folder + "/savedmodel")
    signature = loaded.signatures["serving_default"]
    inputs = {name: [spec.dtype.name, spec.shape.as_list()]
              for name, spec in signature.structured_input_signature[1].items()}
    outputs = {name: [spec.dtype.name, spec.shape.as_list()]
               for name, spec in signature.structured_outputs.items()}
    request = json.load(open(folder + "/request.json"))
    assert request["signature_name"] == "serving_default"
    tensors = signature(image=tf.constant(request["instances"], tf.float32))
    rows = [{name: tensors[name][i].numpy().tolist() for name in sorted(tensors)}
            for i in range(len(request["instances"]))]
    json.dump({"inputs": inputs, "outputs": outputs, "predictions": rows,
               "tf_dtd_imported": "tf_dtd" in sys.modules}, open(folder + "/response.json", "w"))
""")


def test_serving_signature_and_rest_shapes(tmp_path):
    images = digits.load_samples()[0][:3]
    relevance_model = tf_dtd.relevance_model(digits.load_model(), input_range=(0.0, 1.0),
                                             return_prediction=True)
    relevance, logits = relevance_model.predict(images, verbose=0)
    relevance_model.export(str(tmp_path / "savedmodel"), verbose=False)
    (tmp_path / "request.json").write_text(json.dumps(
        {"signature_name": "serving_default", "instances": images.tolist()}))

    result = subprocess.run([sys.executable, "-c", SERVER, str(tmp_path)], capture_output=True,
                            text=True, timeout=300)

    assert result.returncode == 0, result.stderr[-3000:]
    response = json.loads((tmp_path / "response.json").read_text())
    assert not response["tf_dtd_imported"]
    assert response["inputs"] == {"image": ["float32", [None, 28, 28, 1]]}
    assert response["outputs"] == {"output_0": ["float32", [None, 28, 28, 1]],
                                   "output_1": ["float32", [None, 10]]}
    predictions = response["predictions"]
    assert len(predictions) == 3
    np.testing.assert_allclose([p["output_0"] for p in predictions], relevance, rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose([p["output_1"] for p in predictions], logits, rtol=1e-5,
                               atol=1e-6)
