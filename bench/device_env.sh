# device_env.sh — sourced by the device scripts (bench/device_*.sh) on the GPU machine:
#   LD_LIBRARY_PATH  the torch environment's cuDNN 9.19 first (the system's 9.14 gives wrong FP8 output), then the
#                    carried libraries (.carry/lib: what the machine lacks), CUDA's, the environment's CUDA 13 and
#                    cuBLAS;
#   SYS_LD           the same without the environment's cuDNN (to check behaviour on the system cuDNN);
#   /work/main       a link to this checkout: the tests read fixtures from the source path compiled into them.
SITE=/opt/torch/.venv/lib/python3.12/site-packages
SYS_LD=$PWD/.carry/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib:$SITE/nvidia/cu13/lib:$SITE/nvidia/cublas/lib:${LD_LIBRARY_PATH:-}
export LD_LIBRARY_PATH=$SITE/nvidia/cudnn/lib:$SYS_LD
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
