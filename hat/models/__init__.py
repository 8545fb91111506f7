from hat.models.transformer import (  # noqa: F401
    ModelOptions,
    SuperTransformer,
    count_parameters,
    sampled_parameter_count,
)
