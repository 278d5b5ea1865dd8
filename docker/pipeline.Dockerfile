# Image of the Ray head, the GPU workers and the job container of docker-compose.yml: Ray + CUDA + this project.
# It runs as the non-root user `ymap` (APP_UID:APP_GID, which docker-compose.yml sets to the host user's ids so
# that files written to the bind-mounted store and model cache belong to that user).
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${RAY_IMAGE}
ARG APP_UID=1000
ARG APP_GID=1000
USER root
WORKDIR /app
COPY pyproject.toml README.md ./
COPY .ci/install-detectron2-sources.sh .ci/
COPY shards shards
COPY teachers teachers
COPY pipeline pipeline
COPY student student
RUN pip install --no-cache-dir -e '.[ocr,detectron2-sources]' \
 && bash .ci/install-detectron2-sources.sh "$(command -v python)" \
 && python -m compileall -q /app/shards /app/teachers /app/pipeline /app/student
# The user. The base image's user `ray` may already hold uid 1000 (then `ymap` is a second name for it) and has
# password-less sudo: that grant is removed, and compose adds no-new-privileges besides. Every folder on the way
# to the Python environment must be searchable by a uid other than the base image's (its HOME may be 0750).
# Writable for the user: HOME, Ray's temp dir (/tmp/ray, made by Ray itself under /tmp, which is 1777), and the
# mount points /data/shards and /models (bind mounts from the host replace them in compose).
RUN test "${APP_UID}" -ne 0 && test "${APP_GID}" -ne 0 \
 && (getent group "${APP_GID}" >/dev/null || groupadd --gid "${APP_GID}" ymap) \
 && useradd --non-unique --uid "${APP_UID}" --gid "${APP_GID}" --no-create-home --home-dir /home/ymap \
      --shell /bin/bash ymap \
 && install -d -m 0750 -o "${APP_UID}" -g "${APP_GID}" /home/ymap /data/shards /models \
 && rm -rf /tmp/ray \
 && if [ -f /etc/sudoers ]; then sed -i '/NOPASSWD/d' /etc/sudoers; fi \
 && if [ -d /etc/sudoers.d ]; then find /etc/sudoers.d -type f -exec sed -i '/NOPASSWD/d' {} +; fi \
 && if getent group sudo >/dev/null; then for u in $(getent group sudo | cut -d: -f4 | tr , ' '); do \
      gpasswd -d "$u" sudo; done; fi \
 && p="$(python -c 'import sys; print(sys.prefix)')" \
 && while [ "$p" != / ]; do chmod o+x "$p"; p="$(dirname "$p")"; done
ENV HOME=/home/ymap \
    HF_HOME=/models/huggingface TORCH_HOME=/models/torch GENSIM_DATA_DIR=/models/gensim-data \
    FVCORE_CACHE=/models/fvcore YMAP_DISTILL_CACHE=/models/ymap-distill
USER ${APP_UID}:${APP_GID}
# Fails the build when the user cannot run the project, write its HOME, or gain root through sudo.
RUN python -c "import ray, shards, teachers, pipeline, student" && ray --version && test -w "$HOME" \
 && test -w /models && test -w /data/shards && test "$(id -u)" -ne 0 && ! sudo -n true 2>/dev/null
