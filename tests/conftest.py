"""Test networks shared by the projection tests (built once per session; none of the tests runs a
new forward pass on them)."""
import pytest
from projcases import make


@pytest.fixture(scope="session")
def fmnist_net():
    return make("fmnist")


@pytest.fixture(scope="session")
def alexnet_net():
    return make("alexnet")


@pytest.fixture(scope="session")
def zfnet_net():
    return make("zfnet")


@pytest.fixture(scope="session")
def vgg16_net():
    return make("vgg16")
