"""Sources of the Triton Python-backend models that runtime/triton_repo.py copies into a model
repository as ``<model>/1/model.py``. They run inside tritonserver's Python stub
(``triton_python_backend_utils`` exists only there) and import this project's runtime."""
