"""Builds the hook package; the gRPC modules are generated here from the repository's proto.

`proto/noisescope/v1/noisescope.proto` is the one contract with the sidecar, so the Python
messages are never written by hand: grpc_tools.protoc writes them into `noisescope/v1/`
(git-ignored) before the package is collected, where the generated
`from noisescope.v1 import noisescope_pb2` resolves to this package.
"""
from __future__ import annotations

import re
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.egg_info import egg_info
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent / "proto"
PROTO = PROTO_ROOT / "noisescope" / "v1" / "noisescope.proto"
GENERATED = HERE / "noisescope" / "v1"
OUTPUTS = ("noisescope_pb2.py", "noisescope_pb2.pyi", "noisescope_pb2_grpc.py")


def generate_grpc_code() -> None:
    """Runs protoc on the repository's proto; an sdist without it keeps what it shipped."""
    if not PROTO.exists():
        if all((GENERATED / name).exists() for name in OUTPUTS):
            return
        raise RuntimeError(f"{PROTO} is missing and no generated code is present: build from the repository")
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as error:  # pip shows the last line of the build's traceback: make it say what to do
        raise ImportError(
            "building the noisescope hook needs grpcio-tools (it generates the gRPC code from proto/): "
            "`pip install grpcio-tools` into this environment first, or leave out --no-build-isolation so pip "
            "fetches it"
        ) from error

    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    GENERATED.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={HERE}",
        f"--pyi_out={HERE}",
        f"--grpc_python_out={HERE}",
        str(PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"grpc_tools.protoc failed on {PROTO}")
    (GENERATED / "__init__.py").write_text(
        '"""Generated at build time from proto/noisescope/v1/noisescope.proto; do not edit."""\n'
    )


def runtime_requirements() -> list[str]:
    """Floors for grpcio and protobuf: the generated code refuses older runtimes at import."""
    requirements = ["torch>=2.0"]
    try:
        generate_grpc_code()
        pb2 = (GENERATED / "noisescope_pb2.py").read_text()
        grpc_stub = (GENERATED / "noisescope_pb2_grpc.py").read_text()
        protobuf_floor = re.search(r"Protobuf Python Version: ([0-9.]+)", pb2)
        grpc_floor = re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", grpc_stub)
    except (OSError, RuntimeError, ImportError):
        protobuf_floor = grpc_floor = None
    requirements.append(f"grpcio>={grpc_floor.group(1)}" if grpc_floor else "grpcio")
    requirements.append(f"protobuf>={protobuf_floor.group(1)}" if protobuf_floor else "protobuf")
    return requirements


class GeneratingBuildPy(build_py):
    def run(self) -> None:
        generate_grpc_code()
        super().run()


class GeneratingEggInfo(egg_info):
    def run(self) -> None:
        generate_grpc_code()
        super().run()


class GeneratingSdist(sdist):
    def run(self) -> None:
        generate_grpc_code()
        super().run()


setup(
    install_requires=runtime_requirements(),
    cmdclass={"build_py": GeneratingBuildPy, "egg_info": GeneratingEggInfo, "sdist": GeneratingSdist},
)
