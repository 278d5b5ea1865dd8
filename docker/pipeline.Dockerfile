# Image of the Ray head, the GPU workers and the job container of docker-compose.yml: Ray + CUDA + this project.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${RAY_IMAGE}
USER root
WORKDIR /app
COPY pyproject.toml README.md ./
COPY .ci/install-detectron2-sources.sh .ci/
COPY shards shards
COPY teachers teachers
COPY pipeline pipeline
COPY student student
RUN pip install --no-cache-dir -e '.[ocr,detectron2-sources]' \
 && bash .ci/install-detectron2-sources.sh "$(command -v python)"
ENV HF_HOME=/models/huggingface TORCH_HOME=/models/torch GENSIM_DATA_DIR=/models/gensim-data \
    FVCORE_CACHE=/models/fvcore YMAP_DISTILL_CACHE=/models/ymap-distill
