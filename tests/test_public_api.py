import importlib

import pytest

PACKAGES = [
    "distopt",
    "distopt.optimizers",
    "distopt.optimizers.schedules",
    "distopt.distribute",
    "distopt.comm",
    "distopt.collectives",
    "distopt.losses",
    "distopt.utils",
    "distopt.launch",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_every_public_name_resolves(name):
    module = importlib.import_module(name)
    assert module.__all__, f"{name} has an empty __all__"
    for attr in module.__all__:
        assert getattr(module, attr) is not None, f"{name}.{attr}"


def test_optimizer_layer_never_imports_mpi4py():
    import pathlib

    import distopt.optimizers

    root = pathlib.Path(distopt.optimizers.__file__).parent
    for path in root.rglob("*.py"):
        assert "mpi4py" not in path.read_text(), f"{path} mentions mpi4py"


def test_design_names_exist():
    import distopt

    for name in ["SGD", "Adam", "Optimizer", "get", "serialize", "deserialize"]:
        assert hasattr(distopt.optimizers, name)
    for name in ["Strategy", "MPIStrategy", "ReduceOp", "ReplicaContext", "get_strategy",
                 "has_strategy", "get_replica_context", "in_cross_replica_context"]:  # fmt: skip
        assert hasattr(distopt.distribute, name)
    assert callable(distopt.losses.compute_average_loss)
    assert callable(distopt.Variable)
