from mnist_sweep.masking import masked, masked_tree


def test_a_password_in_a_url_is_masked_and_the_rest_kept():
    assert masked("postgresql://sweep:s3cr%40t@db.example:5432/optuna") == (
        "postgresql://sweep:***@db.example:5432/optuna"
    )
    assert (
        masked("http://alice:pw@127.0.0.1:5000/path?x=1")
        == "http://alice:***@127.0.0.1:5000/path?x=1"
    )


def test_urls_without_a_password_are_unchanged():
    for url in ("http://127.0.0.1:5000", "http://alice@host", "sqlite:///a@b/mlflow.db", "mlp"):
        assert masked(url) == url


def test_a_config_tree_is_masked_at_every_depth():
    tree = {"mlflow": {"tracking_uri": "http://u:p@h"}, "hosts": ["postgresql://u:p@h/d"], "n": 3}
    assert masked_tree(tree) == {
        "mlflow": {"tracking_uri": "http://u:***@h"},
        "hosts": ["postgresql://u:***@h/d"],
        "n": 3,
    }
