"""The `keras-kd` command line. It parses flags and calls the public API."""

import argparse
import os
import sys

_EPILOG = """examples:
  keras-kd demo
  keras-kd demo --ensemble 3        # 3 CNN teachers, distilled as an ensemble
  keras-kd demo --reverse           # the small MLP teaches the large CNN
  keras-kd train-teacher --dataset mnist1d --output saved_models/teacher.keras
  keras-kd distill --teacher saved_models/teacher.keras --temperature 2
  keras-kd distill --teacher a.keras --teacher b.keras   # an ensemble
  keras-kd export saved_models/demo/student.keras --format tflite
  keras-kd tune --trials 12 --tuner bayesian   # search T and alpha
"""
_DEMO_OUTPUTS = {
    "standard": "saved_models/demo",
    "ensemble": "saved_models/demo_ensemble",
    "reverse": "saved_models/demo_reverse",
}


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, received {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}")
    return value


def _common(parser):
    parser.add_argument("--dataset", default="mnist1d",
                        help="TFDS dataset name (default: the embedded mnist1d)")
    parser.add_argument("--data-dir", default=None,
                        help="TFDS data directory (default: TFDS' own)")
    parser.add_argument("--batch-size", type=_positive_int, default=64,
                        help="batch size of training on labelled data (default 64)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of initial weights and shuffling (default 0)")
    parser.add_argument("--verbose", default="auto", choices=["auto", "0", "1", "2"],
                        help="Keras fit verbosity (default: bars on a terminal)")


def _resume_flag(parser):
    parser.add_argument("--no-resume", action="store_true",
                        help="start over instead of resuming an unfinished run "
                             "from its backup in OUTPUT/.backup (resuming is "
                             "the default)")


def _distill_flags(parser, reverse=False):
    from keras_kd.distiller import (
        DEFAULT_ALPHA,
        DEFAULT_TEMPERATURE,
        REVERSE_ALPHA,
        REVERSE_TEMPERATURE,
    )

    def_t = f"default {DEFAULT_TEMPERATURE:g}" + (
        f"; {REVERSE_TEMPERATURE:g} with --reverse" if reverse else ""
    )
    def_a = f"default {DEFAULT_ALPHA:g}" + (
        f"; {REVERSE_ALPHA:g} with --reverse" if reverse else ""
    )
    parser.add_argument("--temperature", type=float, default=None,
                        help=f"soft-target temperature T > 0 ({def_t})")
    parser.add_argument("--alpha", type=float, default=None,
                        help=f"weight of the hard-label loss in [0, 1] ({def_a})")


def _cache_flag(parser, note=""):
    parser.add_argument(
        "--no-cache", action="store_true",
        help="run the teacher on every batch instead of once over the fixed "
             "transfer set (the default caches its outputs: the same "
             f"distillation, several times faster per epoch){note}")


def _at_least_two(text):
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(
            f"expected at least 2 teachers (one is the plain demo), received {text!r}"
        )
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-kd",
        description="Knowledge distillation for Keras 3.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="distil a CNN into an MLP on MNIST-1D and report "
        "(or an ensemble: --ensemble N, or reverse distillation: --reverse)")
    _common(demo)
    _distill_flags(demo, reverse=True)
    kind = demo.add_mutually_exclusive_group()
    kind.add_argument("--ensemble", type=_at_least_two, default=None, metavar="N",
                      help="train N CNN teachers (seeds seed..seed+N-1) and distil "
                           "them as an ensemble, next to teacher 0 alone")
    kind.add_argument("--reverse", action="store_true",
                      help="reverse distillation: train the MLP, then the CNN from "
                           "scratch and with the MLP as teacher (mode='reverse')")
    demo.add_argument("--ensemble-average", choices=["probabilities", "logits"],
                      default="probabilities",
                      help="with --ensemble: average the teachers' probabilities "
                           "(default) or logits")
    demo.add_argument("--distill-batch-size", type=_positive_int, default=256,
                      help="batch size of distillation (default 256)")
    demo.add_argument("--output", default=None,
                      help="output folder (default: "
                           + ", ".join(f"{v} ({k})" for k, v in _DEMO_OUTPUTS.items())
                           + ")")
    demo.add_argument("--teacher-epochs", type=_positive_int, default=40,
                      help="epochs of each CNN (with --reverse: of both CNN runs)")
    demo.add_argument("--student-epochs", type=_positive_int, default=60,
                      help="epochs of the MLP from scratch (with --reverse: the "
                           "MLP teacher)")
    demo.add_argument("--distill-epochs", type=_positive_int, default=40,
                      help="epochs of each distillation into the MLP")
    demo.add_argument("--train-size", type=_positive_int, default=None,
                      help="use only this many training examples (quick runs)")
    demo.add_argument("--transfer-size", type=_positive_int, default=None,
                      help="use only this many transfer examples, drawn at random "
                           "once (quick runs)")
    _resume_flag(demo)
    _cache_flag(demo, note="; --reverse always runs its small MLP teacher "
                           "on every batch")

    teach = sub.add_parser("train-teacher", help="train the reference CNN teacher")
    _common(teach)
    teach.add_argument("--output", default="saved_models/teacher.keras")
    teach.add_argument("--epochs", type=_positive_int, default=40)
    _resume_flag(teach)

    distill = sub.add_parser(
        "distill", help="distil a saved teacher into a student",
        description="Distil saved teacher(s) into a student on the dataset's "
                    "transfer set (its inputs only, e.g. MNIST-1D's train + "
                    "transfer), validating on its test split; writes "
                    "OUTPUT/student.keras.")
    _common(distill)
    _distill_flags(distill)
    distill.add_argument("--teacher", required=True, action="append",
                         help="teacher .keras file; repeat the flag for an ensemble "
                              "(the mean of the teachers' probabilities)")
    distill.add_argument("--student", default=None,
                         help="untrained student .keras file (default: the reference MLP)")
    distill.add_argument("--output", default="saved_models/distill",
                         help="output folder (default saved_models/distill)")
    distill.add_argument("--epochs", type=_positive_int, default=40,
                         help="distillation epochs (default 40)")
    distill.add_argument("--distill-batch-size", type=_positive_int, default=256,
                         help="batch size of distillation (default 256)")
    _resume_flag(distill)
    _cache_flag(distill)

    export = sub.add_parser(
        "export", help="export a student .keras file as a TF SavedModel or a "
        "TFLite file for deployment")
    export.add_argument("student", metavar="STUDENT.keras",
                        help="the student (or a Distiller) saved as .keras")
    export.add_argument("--format", choices=["savedmodel", "tflite"],
                        default="savedmodel",
                        help="savedmodel: a folder for TF Serving; tflite: a "
                             "file for mobile and edge (default: savedmodel)")
    export.add_argument("--output", default=None,
                        help="destination (default: next to STUDENT.keras, "
                             "STUDENT_savedmodel/ or STUDENT.tflite)")

    tune = sub.add_parser(
        "tune", help="search the temperature and alpha with keras-tuner "
        "(the teacher runs once per search)")
    _common(tune)
    tune.add_argument("--teacher", default=None,
                      help="teacher .keras file (default: OUTPUT/teacher.keras if "
                           "present, else train one there)")
    tune.add_argument("--tuner", choices=["random", "bayesian", "hyperband"],
                      default="random")
    tune.add_argument("--trials", type=_positive_int, default=12,
                      help="number of trials (random, bayesian; default 12)")
    tune.add_argument("--epochs", type=_positive_int, default=15,
                      help="epochs of each trial (hyperband: the most; default 15)")
    tune.add_argument("--temperature-range", type=float, nargs=2, default=[1.0, 20.0],
                      metavar=("MIN", "MAX"), help="T range, log scale (default 1 20)")
    tune.add_argument("--alpha-range", type=float, nargs=2, default=[0.0, 1.0],
                      metavar=("MIN", "MAX"), help="alpha range (default 0 1)")
    tune.add_argument("--learning-rate", type=float, default=2e-3,
                      help="initial learning rate, cosine-decayed (default 0.002)")
    tune.add_argument("--validation-fraction", type=float, default=0.2,
                      help="share of train held out for the objective (default 0.2)")
    tune.add_argument("--train-size", type=_positive_int, default=None,
                      help="use only this many training examples (quick runs)")
    tune.add_argument("--transfer", action="store_true",
                      help="train on the inputs plus the unlabelled transfer split "
                           "(pure distillation, as the demo; alpha is not searched)")
    tune.add_argument("--transfer-size", type=_positive_int, default=None,
                      help="with --transfer: use only this many unlabelled examples")
    tune.add_argument("--distill-batch-size", type=_positive_int, default=256,
                      help="batch size with --transfer (default 256)")
    tune.add_argument("--teacher-epochs", type=_positive_int, default=40,
                      help="epochs of the teacher when one is trained (default 40)")
    tune.add_argument("--no-default", action="store_true",
                      help="skip training the default-T/alpha student for comparison")
    tune.add_argument("--resume", action="store_true",
                      help="continue the search in OUTPUT/tuner instead of replacing it")
    tune.add_argument("--output", default="saved_models/tune", help="output folder")
    return parser


def _verbose(value):
    return value if value == "auto" else int(value)


def _run_demo(args, verbose):
    from keras_kd import demo

    kind = "reverse" if args.reverse else "ensemble" if args.ensemble else "standard"
    common = dict(dataset=args.dataset, batch_size=args.batch_size,
                  train_size=args.train_size, data_dir=args.data_dir,
                  seed=args.seed, verbose=verbose)
    # Unset flags keep each demo's own defaults.
    for flag in ("temperature", "alpha"):
        if getattr(args, flag) is not None:
            common[flag] = getattr(args, flag)
    output = args.output or _DEMO_OUTPUTS[kind]
    common["resume"] = not args.no_resume
    if kind == "reverse":
        demo.run_reverse_demo(output, cnn_epochs=args.teacher_epochs,
                              mlp_epochs=args.student_epochs, **common)
        return
    common.update(teacher_epochs=args.teacher_epochs,
                  student_epochs=args.student_epochs,
                  distill_epochs=args.distill_epochs,
                  distill_batch_size=args.distill_batch_size,
                  transfer_size=args.transfer_size,
                  cache=not args.no_cache)
    if kind == "ensemble":
        demo.run_ensemble_demo(output, num_teachers=args.ensemble,
                               ensemble_average=args.ensemble_average, **common)
    else:
        demo.run_demo(output, **common)


def _run(args):
    import keras

    from keras_kd import Distiller, _files, datasets, measure, models, training

    if args.command == "export":
        _run_export(args)
        return
    _check_output(args)
    verbose = _verbose(args.verbose)
    if args.command == "demo":
        _run_demo(args, verbose)
        return
    if args.command == "tune":
        from keras_kd import tuning

        tuning.run_search(
            args.output, dataset=args.dataset, teacher=args.teacher,
            tuner=args.tuner, trials=args.trials, epochs=args.epochs,
            temperature=tuple(args.temperature_range),
            alpha=tuple(args.alpha_range), learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            validation_fraction=args.validation_fraction,
            train_size=args.train_size, transfer=args.transfer,
            transfer_size=args.transfer_size,
            distill_batch_size=args.distill_batch_size,
            teacher_epochs=args.teacher_epochs,
            compare_default=not args.no_default, resume=args.resume,
            data_dir=args.data_dir, seed=args.seed, verbose=verbose,
        )
        return

    keras.utils.set_random_seed(args.seed)
    if args.command == "distill":  # Check the inputs before any data work.
        teachers = [_files.load_model(path, argument="--teacher")
                    for path in args.teacher]
        teacher = teachers[0] if len(teachers) == 1 else teachers
        student = None
        if args.student is not None:
            student = _files.load_model(args.student, argument="--student")
        Distiller(student or models.mlp_student(teachers[0].input_shape[1:],
                                                teachers[0].output_shape[-1]),
                  teacher, temperature=args.temperature, alpha=args.alpha)
    data = datasets.load(args.dataset, batch_size=args.batch_size,
                         data_dir=args.data_dir, seed=args.seed)
    if args.command == "train-teacher":
        output_dir, name = os.path.split(args.output)
        teacher, _ = training.train_teacher(
            data, epochs=args.epochs, validation_data=data["test"], verbose=verbose,
            callbacks=training.backup(output_dir or ".", name[: -len(".keras")],
                                      resume=not args.no_resume,
                                      description="the teacher's training"),
        )
        _files.save_model(teacher, args.output)
        accuracy = measure.accuracy(teacher, data["test"])
        print(f"teacher test accuracy {accuracy:.4f}; saved to {args.output}")
        return

    _check_models_fit_data(teachers, student, data, args.dataset)
    if student is None:
        student = models.mlp_student(data.input_shape, data.num_classes)
    cache = not args.no_cache  # fixed data: the teacher runs once
    transfer = datasets.transfer_set(args.dataset, batch_size=args.distill_batch_size,
                                     data_dir=args.data_dir, seed=args.seed,
                                     shuffle=not cache)
    distiller, _ = training.distill(
        teacher, student, transfer, epochs=args.epochs, temperature=args.temperature,
        alpha=args.alpha, validation_data=data["test"], verbose=verbose,
        cache=cache, seed=args.seed,
        callbacks=training.backup(args.output, "distill", resume=not args.no_resume,
                                  description="the distillation"),
    )
    path = _files.save_model(distiller.student, os.path.join(args.output, "student.keras"))
    accuracy = measure.accuracy(distiller.student, data["test"])
    print(f"distilled student test accuracy {accuracy:.4f}; saved to {path}")


def _run_export(args):
    from keras_kd import export

    output = args.output
    if output is None:
        stem = args.student[: -len(".keras")] if args.student.endswith(".keras") \
            else args.student
        output = stem + (".tflite" if args.format == "tflite" else "_savedmodel")
    exported = export.export_student(args.student, output, format=args.format)
    print(f"exported {args.student} as {exported.format} to {exported.path} "
          f"({exported.size_bytes:,} bytes)")


def _check_output(args):
    """Refuses an --output the command cannot write, before any training."""
    output = args.output
    if args.command == "train-teacher":
        if not output.endswith(".keras"):
            raise ValueError("Expected --output to be a `.keras` file path. "
                             f"Received: --output={output!r}")
        if os.path.isdir(output):
            raise ValueError("Expected --output to be a `.keras` file path, not "
                             f"a folder. Received: --output={output!r}")
    elif output is not None and os.path.exists(output) and not os.path.isdir(output):
        raise ValueError("Expected --output to be a folder (it holds the run's "
                         f"files); it is a file. Received: --output={output!r}")


def _check_models_fit_data(teachers, student, data, dataset):
    """Refuses models whose inputs or classes do not fit the dataset."""
    for flag, model in [("--teacher", t) for t in teachers] + [("--student", student)]:
        if model is None:
            continue
        input_shape = tuple(model.input_shape[1:])
        if len(input_shape) == len(data.input_shape) and any(
                a is not None and a != b for a, b in zip(input_shape, data.input_shape)):
            raise ValueError(
                f"Expected the {flag} model to take the inputs of dataset "
                f"{dataset!r}, of shape {tuple(data.input_shape)}. Received: "
                f"{flag} model {model.name!r} with input shape {input_shape}")
        classes = model.output_shape[-1]
        if classes is not None and classes != data.num_classes:
            raise ValueError(
                f"Expected the {flag} model to output one logit per class of "
                f"dataset {dataset!r} ({data.num_classes}). Received: {flag} "
                f"model {model.name!r} with {classes} outputs")


def main(argv=None):
    """Entry point of the `keras-kd` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from keras_kd.datasets import DatasetNotAvailableError

    try:
        _run(args)
    except (ValueError, DatasetNotAvailableError) as error:
        parser.exit(2, f"keras-kd {args.command}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
