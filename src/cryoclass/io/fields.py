"""Field names of RELION STAR and CryoSPARC .cs files, in one place.

Every STAR label and .cs field that cryoclass reads or writes is a constant here
(STAR labels without the leading underscore, as :func:`cryoclass.io.star.read_star`
returns them). The canonical, unit-suffixed column names of
:attr:`cryoclass.io.particles.ParticleTable.meta` are defined here too, with the
mapping from each format (units are converted once, in :mod:`cryoclass.io.particles`).

Example
-------
>>> from cryoclass.io import fields as F
>>> F.RLN_IMAGE_NAME, F.CS_BLOB_PATH, F.DEFOCUS_U_A
('rlnImageName', 'blob/path', 'defocus_u_A')
"""

# --- RELION STAR labels ------------------------------------------------------------------

# Image and micrograph.
RLN_IMAGE_NAME = "rlnImageName"  # "idx@stack.mrcs", idx 1-based
RLN_MICROGRAPH_NAME = "rlnMicrographName"
RLN_COORDINATE_X = "rlnCoordinateX"  # px in the micrograph
RLN_COORDINATE_Y = "rlnCoordinateY"
RLN_GROUP_NUMBER = "rlnGroupNumber"
RLN_GROUP_NAME = "rlnGroupName"
RLN_RANDOM_SUBSET = "rlnRandomSubset"

# Optics (3.1+: in data_optics; 3.0: per particle).
RLN_OPTICS_GROUP = "rlnOpticsGroup"  # 1-based
RLN_OPTICS_GROUP_NAME = "rlnOpticsGroupName"
RLN_IMAGE_PIXEL_SIZE = "rlnImagePixelSize"  # A
RLN_PIXEL_SIZE = "rlnPixelSize"  # A (older / reconstruct-style files)
RLN_MAGNIFICATION = "rlnMagnification"  # 3.0: pixel size = detector px (um) * 1e4 / mag
RLN_DETECTOR_PIXEL_SIZE = "rlnDetectorPixelSize"  # um
RLN_IMAGE_SIZE = "rlnImageSize"  # px
RLN_IMAGE_DIMENSIONALITY = "rlnImageDimensionality"
RLN_MICROGRAPH_ORIGINAL_PIXEL_SIZE = "rlnMicrographOriginalPixelSize"
RLN_MICROGRAPH_PIXEL_SIZE = "rlnMicrographPixelSize"
RLN_CTF_DATA_ARE_CTF_PREMULTIPLIED = "rlnCtfDataAreCtfPremultiplied"

# CTF.
RLN_DEFOCUS_U = "rlnDefocusU"  # A
RLN_DEFOCUS_V = "rlnDefocusV"  # A
RLN_DEFOCUS_ANGLE = "rlnDefocusAngle"  # deg, from the image x axis
RLN_VOLTAGE = "rlnVoltage"  # kV
RLN_SPHERICAL_ABERRATION = "rlnSphericalAberration"  # mm
RLN_AMPLITUDE_CONTRAST = "rlnAmplitudeContrast"  # fraction
RLN_PHASE_SHIFT = "rlnPhaseShift"  # deg
RLN_CTF_BFACTOR = "rlnCtfBfactor"  # A^2
RLN_CTF_SCALEFACTOR = "rlnCtfScalefactor"

# Alignment (2D).
RLN_ORIGIN_X = "rlnOriginX"  # px (3.0)
RLN_ORIGIN_Y = "rlnOriginY"
RLN_ORIGIN_X_ANGST = "rlnOriginXAngst"  # A (3.1+); particle centre = box centre - origin
RLN_ORIGIN_Y_ANGST = "rlnOriginYAngst"
RLN_ANGLE_PSI = "rlnAnglePsi"  # deg
RLN_ANGLE_ROT = "rlnAngleRot"
RLN_ANGLE_TILT = "rlnAngleTilt"
RLN_CLASS_NUMBER = "rlnClassNumber"  # 1-based
RLN_MAX_VALUE_PROB_DISTRIBUTION = "rlnMaxValueProbDistribution"
RLN_NR_OF_SIGNIFICANT_SAMPLES = "rlnNrOfSignificantSamples"
RLN_LOG_LIKELI_CONTRIBUTION = "rlnLogLikeliContribution"
RLN_NORM_CORRECTION = "rlnNormCorrection"

# Class averages as references (relion_refine --ref reads several 2D references only from
# a STAR file with this label; a bare .mrcs stack is read as ONE reference).
RLN_REFERENCE_IMAGE = "rlnReferenceImage"  # "k@class_averages.mrcs", k 1-based
RLN_CLASS_DISTRIBUTION = "rlnClassDistribution"  # fraction of the particles
RLN_ESTIMATED_RESOLUTION = "rlnEstimatedResolution"  # A

#: Labels that RELION 3.1+ keeps in data_optics rather than per particle.
RLN_OPTICS_LABELS = (
    RLN_OPTICS_GROUP_NAME,
    RLN_OPTICS_GROUP,
    "rlnMtfFileName",
    RLN_MICROGRAPH_ORIGINAL_PIXEL_SIZE,
    RLN_VOLTAGE,
    RLN_SPHERICAL_ABERRATION,
    RLN_AMPLITUDE_CONTRAST,
    RLN_IMAGE_PIXEL_SIZE,
    RLN_IMAGE_SIZE,
    RLN_IMAGE_DIMENSIONALITY,
    RLN_CTF_DATA_ARE_CTF_PREMULTIPLIED,
    "rlnBeamTiltX",
    "rlnBeamTiltY",
    "rlnOddZernike",
    "rlnEvenZernike",
    "rlnMagMat00",
    "rlnMagMat01",
    "rlnMagMat10",
    "rlnMagMat11",
)

#: Block names RELION uses.
STAR_BLOCK_OPTICS = "optics"
STAR_BLOCK_PARTICLES = "particles"
STAR_BLOCK_MODEL_CLASSES = "model_classes"  # the block relion_refine --ref looks for first
#: ``# version`` line written at the top of every block (RELION 3.1 writes 30001).
STAR_VERSION = 30001

# --- CryoSPARC .cs fields ------------------------------------------------------------------

CS_UID = "uid"  # u8
CS_BLOB_PATH = "blob/path"  # S, relative to the CryoSPARC project directory
CS_BLOB_IDX = "blob/idx"  # u4, 0-based
CS_BLOB_SHAPE = "blob/shape"  # (2,) u4, [ny, nx]
CS_BLOB_PSIZE_A = "blob/psize_A"  # f4
CS_BLOB_SIGN = "blob/sign"  # f4, -1: protein light on dark (RELION's, cryoclass's); +1: dark
CS_BLOB_IMPORT_SIG = "blob/import_sig"  # u8, CryoSPARC's import signature (0: none)
CS_BLOB_RES_A = "blob/res_A"  # f4, class averages: resolution of each class (A)

CS_CTF_TYPE = "ctf/type"
CS_CTF_EXP_GROUP_ID = "ctf/exp_group_id"  # u4
CS_CTF_ACCEL_KV = "ctf/accel_kv"  # f4
CS_CTF_CS_MM = "ctf/cs_mm"  # f4
CS_CTF_AMP_CONTRAST = "ctf/amp_contrast"  # f4
CS_CTF_DF1_A = "ctf/df1_A"  # f4
CS_CTF_DF2_A = "ctf/df2_A"  # f4
CS_CTF_DF_ANGLE_RAD = "ctf/df_angle_rad"  # f4
CS_CTF_PHASE_SHIFT_RAD = "ctf/phase_shift_rad"  # f4
CS_CTF_BFACTOR = "ctf/bfactor"  # f4, A^2
CS_CTF_SCALE = "ctf/scale"  # f4
CS_CTF_SCALE_CONST = "ctf/scale_const"  # f4
CS_CTF_SHIFT_A = "ctf/shift_A"  # (2,) f4, beam tilt / aberrations below: 0 = none
CS_CTF_TILT_A = "ctf/tilt_A"  # (2,) f4
CS_CTF_TREFOIL_A = "ctf/trefoil_A"  # (2,) f4
CS_CTF_TETRA_A = "ctf/tetra_A"  # (4,) f4
CS_CTF_ANISOMAG = "ctf/anisomag"  # (4,) f4

CS_LOCATION_MICROGRAPH_UID = "location/micrograph_uid"
CS_LOCATION_MICROGRAPH_PATH = "location/micrograph_path"  # S
CS_LOCATION_MICROGRAPH_SHAPE = "location/micrograph_shape"  # (2,) u4, [ny, nx]
CS_LOCATION_CENTER_X_FRAC = "location/center_x_frac"  # f4, x / nx
CS_LOCATION_CENTER_Y_FRAC = "location/center_y_frac"  # f4, y / ny

CS_A2D_CLASS = "alignments2D/class"  # u4, 0-based
CS_A2D_POSE = "alignments2D/pose"  # f4, rad
CS_A2D_SHIFT = "alignments2D/shift"  # (2,) f4, px, (x, y)
CS_A2D_PSIZE_A = "alignments2D/psize_A"  # f4
CS_A2D_CLASS_POSTERIOR = "alignments2D/class_posterior"  # f4
CS_A2D_CLASS_ESS = "alignments2D/class_ess"  # f4
CS_A2D_ERROR = "alignments2D/error"  # f4, lower is better
CS_A2D_SPLIT = "alignments2D/split"  # u4, half set
CS_A2D_ERROR_MIN = "alignments2D/error_min"  # f4
CS_A2D_RESID_POW = "alignments2D/resid_pow"  # f4
CS_A2D_SLICE_POW = "alignments2D/slice_pow"  # f4
CS_A2D_IMAGE_POW = "alignments2D/image_pow"  # f4
CS_A2D_CROSS_COR = "alignments2D/cross_cor"  # f4
CS_A2D_ALPHA = "alignments2D/alpha"  # f4, per-particle scale
CS_A2D_ALPHA_MIN = "alignments2D/alpha_min"  # f4
CS_A2D_WEIGHT = "alignments2D/weight"  # f4
CS_A2D_POSE_ESS = "alignments2D/pose_ess"  # f4
CS_A2D_SHIFT_ESS = "alignments2D/shift_ess"  # f4

#: CryoSPARC's particle slots in the order of a real 2D classification export (42 fields):
#: name -> (dtype, shape). ``S`` fields take the width of their longest value.
CS_PARTICLE_SLOTS: dict[str, tuple[str, tuple[int, ...]]] = {
    CS_UID: ("<u8", ()),
    CS_BLOB_PATH: ("S", ()), CS_BLOB_IDX: ("<u4", ()), CS_BLOB_SHAPE: ("<u4", (2,)),
    CS_BLOB_PSIZE_A: ("<f4", ()), CS_BLOB_SIGN: ("<f4", ()), CS_BLOB_IMPORT_SIG: ("<u8", ()),
    CS_CTF_TYPE: ("S", ()), CS_CTF_EXP_GROUP_ID: ("<u4", ()), CS_CTF_ACCEL_KV: ("<f4", ()),
    CS_CTF_CS_MM: ("<f4", ()), CS_CTF_AMP_CONTRAST: ("<f4", ()), CS_CTF_DF1_A: ("<f4", ()),
    CS_CTF_DF2_A: ("<f4", ()), CS_CTF_DF_ANGLE_RAD: ("<f4", ()),
    CS_CTF_PHASE_SHIFT_RAD: ("<f4", ()), CS_CTF_SCALE: ("<f4", ()),
    CS_CTF_SCALE_CONST: ("<f4", ()), CS_CTF_SHIFT_A: ("<f4", (2,)),
    CS_CTF_TILT_A: ("<f4", (2,)), CS_CTF_TREFOIL_A: ("<f4", (2,)),
    CS_CTF_TETRA_A: ("<f4", (4,)), CS_CTF_ANISOMAG: ("<f4", (4,)), CS_CTF_BFACTOR: ("<f4", ()),
    CS_A2D_SPLIT: ("<u4", ()), CS_A2D_SHIFT: ("<f4", (2,)), CS_A2D_POSE: ("<f4", ()),
    CS_A2D_PSIZE_A: ("<f4", ()), CS_A2D_ERROR: ("<f4", ()), CS_A2D_ERROR_MIN: ("<f4", ()),
    CS_A2D_RESID_POW: ("<f4", ()), CS_A2D_SLICE_POW: ("<f4", ()),
    CS_A2D_IMAGE_POW: ("<f4", ()), CS_A2D_CROSS_COR: ("<f4", ()), CS_A2D_ALPHA: ("<f4", ()),
    CS_A2D_ALPHA_MIN: ("<f4", ()), CS_A2D_WEIGHT: ("<f4", ()), CS_A2D_POSE_ESS: ("<f4", ()),
    CS_A2D_SHIFT_ESS: ("<f4", ()), CS_A2D_CLASS_POSTERIOR: ("<f4", ()),
    CS_A2D_CLASS: ("<u4", ()), CS_A2D_CLASS_ESS: ("<f4", ()),
}

#: CryoSPARC's neutral value of each slot cryoclass does not compute (docs/formats.md §2.4).
#: ``blob/sign`` -1: cryoclass's images are light protein on dark, as RELION's.
CS_NEUTRAL: dict[str, object] = {
    CS_BLOB_SIGN: -1.0, CS_BLOB_IMPORT_SIG: 0, CS_CTF_TYPE: b"imported",
    CS_CTF_EXP_GROUP_ID: 0, CS_CTF_SCALE: 1.0, CS_CTF_SCALE_CONST: 1.0,
    CS_CTF_SHIFT_A: 0.0, CS_CTF_TILT_A: 0.0, CS_CTF_TREFOIL_A: 0.0, CS_CTF_TETRA_A: 0.0,
    CS_CTF_ANISOMAG: 0.0, CS_CTF_BFACTOR: 0.0,
    CS_A2D_RESID_POW: 0.0, CS_A2D_SLICE_POW: 0.0, CS_A2D_IMAGE_POW: 0.0,
    CS_A2D_CROSS_COR: 0.0, CS_A2D_ALPHA: 1.0, CS_A2D_ALPHA_MIN: 1.0, CS_A2D_WEIGHT: 1.0,
    CS_A2D_POSE_ESS: 1.0, CS_A2D_SHIFT_ESS: 1.0,
}

#: Optional per-particle E-step quantities of the ``align`` dict (same names as
#: attributes of :class:`cryoclass.em.ParticleResults`, when it has them) -> .cs slot.
#: Absent (or None): the slot gets its neutral value, or ``error_min`` = ``error``.
CS_OPTIONAL_ALIGN: dict[str, str] = {
    "image_pow": CS_A2D_IMAGE_POW, "cross_cor": CS_A2D_CROSS_COR,
    "resid_pow": CS_A2D_RESID_POW, "slice_pow": CS_A2D_SLICE_POW,
    "alpha": CS_A2D_ALPHA, "alpha_min": CS_A2D_ALPHA_MIN, "pose_ess": CS_A2D_POSE_ESS,
    "shift_ess": CS_A2D_SHIFT_ESS, "error_min": CS_A2D_ERROR_MIN, "weight": CS_A2D_WEIGHT,
}

# --- Canonical columns of ParticleTable.meta (units in the names) --------------------------

IMAGE_PATH = "image_path"  # str, resolved stack path
IMAGE_INDEX = "image_index"  # int64, 0-based
PIXEL_SIZE_A = "pixel_size_A"
DEFOCUS_U_A = "defocus_u_A"
DEFOCUS_V_A = "defocus_v_A"
DEFOCUS_ANGLE_RAD = "defocus_angle_rad"
VOLTAGE_KV = "voltage_kv"
CS_MM = "cs_mm"
AMPLITUDE_CONTRAST = "amplitude_contrast"
PHASE_SHIFT_RAD = "phase_shift_rad"
BFACTOR_A2 = "bfactor_A2"
MICROGRAPH = "micrograph"  # str, "" when absent
LOCATION_X_PX = "location_x_px"  # picked position in the micrograph, NaN when absent
LOCATION_Y_PX = "location_y_px"
INPUT_ORIGIN_X_A = "input_origin_x_A"  # RELION origin sign: centre = box centre - origin
INPUT_ORIGIN_Y_A = "input_origin_y_A"
IMAGE_CONTRAST = "image_contrast"  # +1/-1 multiplier to light-on-dark protein (-blob/sign)
MICROGRAPH_NY_PX = "micrograph_ny_px"  # micrograph shape from the input, 0 when unknown
MICROGRAPH_NX_PX = "micrograph_nx_px"

#: Column order of ParticleTable.meta.
CANONICAL_COLUMNS = (
    IMAGE_PATH,
    IMAGE_INDEX,
    PIXEL_SIZE_A,
    DEFOCUS_U_A,
    DEFOCUS_V_A,
    DEFOCUS_ANGLE_RAD,
    VOLTAGE_KV,
    CS_MM,
    AMPLITUDE_CONTRAST,
    PHASE_SHIFT_RAD,
    BFACTOR_A2,
    MICROGRAPH,
    LOCATION_X_PX,
    LOCATION_Y_PX,
    INPUT_ORIGIN_X_A,
    INPUT_ORIGIN_Y_A,
    IMAGE_CONTRAST,
    MICROGRAPH_NY_PX,
    MICROGRAPH_NX_PX,
)

#: Canonical column <- STAR label (numbers: multiply the STAR value by the factor).
#: Angles in degrees in STAR become radians; image name / pixel size / origins need
#: more than a factor and are handled in :mod:`cryoclass.io.particles`.
STAR_TO_CANONICAL: dict[str, tuple[str, float]] = {
    DEFOCUS_U_A: (RLN_DEFOCUS_U, 1.0),
    DEFOCUS_V_A: (RLN_DEFOCUS_V, 1.0),
    DEFOCUS_ANGLE_RAD: (RLN_DEFOCUS_ANGLE, 3.141592653589793 / 180.0),
    VOLTAGE_KV: (RLN_VOLTAGE, 1.0),
    CS_MM: (RLN_SPHERICAL_ABERRATION, 1.0),
    AMPLITUDE_CONTRAST: (RLN_AMPLITUDE_CONTRAST, 1.0),
    PHASE_SHIFT_RAD: (RLN_PHASE_SHIFT, 3.141592653589793 / 180.0),
    BFACTOR_A2: (RLN_CTF_BFACTOR, 1.0),
    LOCATION_X_PX: (RLN_COORDINATE_X, 1.0),
    LOCATION_Y_PX: (RLN_COORDINATE_Y, 1.0),
}

#: Canonical column <- .cs field (same units, no conversion).
CS_TO_CANONICAL: dict[str, str] = {
    PIXEL_SIZE_A: CS_BLOB_PSIZE_A,
    DEFOCUS_U_A: CS_CTF_DF1_A,
    DEFOCUS_V_A: CS_CTF_DF2_A,
    DEFOCUS_ANGLE_RAD: CS_CTF_DF_ANGLE_RAD,
    VOLTAGE_KV: CS_CTF_ACCEL_KV,
    CS_MM: CS_CTF_CS_MM,
    AMPLITUDE_CONTRAST: CS_CTF_AMP_CONTRAST,
    PHASE_SHIFT_RAD: CS_CTF_PHASE_SHIFT_RAD,
    BFACTOR_A2: CS_CTF_BFACTOR,
}

#: CTF fields that must be present when CTF correction is on (optional ones default to 0).
STAR_CTF_REQUIRED = (
    RLN_DEFOCUS_U,
    RLN_DEFOCUS_V,
    RLN_DEFOCUS_ANGLE,
    RLN_VOLTAGE,
    RLN_SPHERICAL_ABERRATION,
    RLN_AMPLITUDE_CONTRAST,
)
CS_CTF_REQUIRED = (
    CS_CTF_DF1_A,
    CS_CTF_DF2_A,
    CS_CTF_DF_ANGLE_RAD,
    CS_CTF_ACCEL_KV,
    CS_CTF_CS_MM,
    CS_CTF_AMP_CONTRAST,
)

#: CTF values when CTF correction is off (CryoSPARC guide: amplitude contrast 1,
#: defocus 0, spherical aberration 0); phase shift and B-factor are zeroed too.
CTF_OFF_VALUES: dict[str, float] = {
    DEFOCUS_U_A: 0.0,
    DEFOCUS_V_A: 0.0,
    DEFOCUS_ANGLE_RAD: 0.0,
    CS_MM: 0.0,
    AMPLITUDE_CONTRAST: 1.0,
    PHASE_SHIFT_RAD: 0.0,
    BFACTOR_A2: 0.0,
}
#: Voltage used when CTF is off and the input has none (it has no effect then).
DEFAULT_VOLTAGE_KV = 300.0

#: Keys of the ``align`` dict passed to the output writers.
ALIGN_KEYS = (
    "class_index",
    "psi_deg",
    "shift_x_A",
    "shift_y_A",
    "class_posterior",
    "ess",
    "best_class_prob",
    "score",
    "half_set",
)
